// OpenFeature's Node.js server SDK with its OFREP provider, unmodified,
// pointed at readyd's HTTP surface. Evaluates every case of cases.json and
// prints one JSON line with the answers.
//
// Usage: node ofrep_client.js BASE_URL CASES_JSON (NODE_PATH: the SDKs)

const fs = require('fs');
const { OpenFeature } = require('@openfeature/server-sdk');
const { OFREPProvider } = require('@openfeature/ofrep-provider');

async function main() {
  const baseUrl = process.argv[2];
  const cases = JSON.parse(fs.readFileSync(process.argv[3], 'utf8'));
  await OpenFeature.setProviderAndWait(new OFREPProvider({ baseUrl }));
  const client = OpenFeature.getClient();
  const getters = {
    boolean: (k, d, c) => client.getBooleanDetails(k, d, c),
    string: (k, d, c) => client.getStringDetails(k, d, c),
    object: (k, d, c) => client.getObjectDetails(k, d, c),
    number: (k, d, c) => client.getNumberDetails(k, d, c),
  };
  const answers = [];
  for (const item of cases) {
    const context = { targetingKey: item.user, roles: item.roles };
    const details = await getters[item.kind](item.key, item.default, context);
    answers.push({
      value: details.value,
      variant: details.variant === undefined ? null : details.variant,
      reason: details.reason,
      error_code: details.errorCode === undefined ? null : details.errorCode,
    });
  }
  console.log(JSON.stringify({ answers }));
  await OpenFeature.close();
  process.exit(0);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
