// OpenFeature's Node.js server SDK with its flagd provider (rpc resolver),
// unmodified, pointed at readyd. Evaluates every case of cases.json, prints
// one JSON line with the answers, then waits for a configuration change and
// prints the keys it names.
//
// Usage: node openfeature_client.js PORT CASES_JSON (NODE_PATH: the SDKs)

const fs = require('fs');
const { OpenFeature, ProviderEvents } = require('@openfeature/server-sdk');
const { FlagdProvider } = require('@openfeature/flagd-provider');

async function main() {
  const port = Number(process.argv[2]);
  const cases = JSON.parse(fs.readFileSync(process.argv[3], 'utf8'));
  await OpenFeature.setProviderAndWait(
    new FlagdProvider({ host: '127.0.0.1', port, resolverType: 'rpc' }),
  );
  const client = OpenFeature.getClient();
  const changed = new Promise((resolve) => {
    client.addHandler(ProviderEvents.ConfigurationChanged, (details) => {
      resolve((details && details.flagsChanged) || []);
    });
  });
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
  console.log('waiting for a change');
  const timeout = new Promise((resolve) => setTimeout(() => resolve(null), 20000));
  const keys = await Promise.race([changed, timeout]);
  if (keys === null) {
    console.log(JSON.stringify({ error: 'no configuration change within 20 s' }));
    await OpenFeature.close();
    process.exit(1);
  }
  console.log(JSON.stringify({ changed: [...new Set(keys)].sort() }));
  await OpenFeature.close();
  process.exit(0);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
