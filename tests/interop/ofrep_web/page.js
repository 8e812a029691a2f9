// OpenFeature's web SDK with its OFREP web provider, unmodified, pointed at
// readyd. The page's query string holds `config`, JSON:
//   {"baseUrl": readyd's HTTP origin, "token": a client token,
//    "context": the evaluation context,
//    "flags": [{"key", "kind" (boolean|string|number|object), "default"}]}
// It evaluates the flags once the provider is ready, then again on every
// ConfigurationChanged, and keeps everything in window.readydTest.
import { OpenFeature, ProviderEvents } from '@openfeature/web-sdk';
import { OFREPWebProvider } from '@openfeature/ofrep-web-provider';

const state = window.readydTest;
const config = JSON.parse(new URLSearchParams(window.location.search).get('config'));
const getters = {
  boolean: 'getBooleanDetails',
  string: 'getStringDetails',
  number: 'getNumberDetails',
  object: 'getObjectDetails',
};

function evaluate(client) {
  const flags = {};
  for (const flag of config.flags) {
    const details = client[getters[flag.kind]](flag.key, flag.default);
    flags[flag.key] = {
      value: details.value,
      variant: details.variant ?? null,
      reason: details.reason ?? null,
      errorCode: details.errorCode ?? null,
    };
  }
  return flags;
}

function render(status, flags) {
  document.getElementById('status').textContent = status;
  const rows = Object.entries(flags).map(([key, answer]) => {
    const row = document.createElement('tr');
    for (const text of [key, JSON.stringify(answer.value), answer.variant, answer.reason, answer.errorCode]) {
      const cell = document.createElement('td');
      cell.textContent = text ?? '';
      row.append(cell);
    }
    return row;
  });
  document.getElementById('flags').replaceChildren(...rows);
}

async function main() {
  const provider = new OFREPWebProvider({
    baseUrl: config.baseUrl,
    headers: [['Authorization', `Bearer ${config.token}`]],
    cacheMode: 'disabled',
  });
  const client = OpenFeature.getClient();
  client.addHandler(ProviderEvents.ConfigurationChanged, (details) => {
    const flags = evaluate(client);
    state.cachedKeys = Object.keys(provider.flagCache).sort();
    state.changes.push({
      at: performance.now(),
      flagsChanged: (details && details.flagsChanged) || [],
      flags,
    });
    render(`changed ${state.changes.length} time(s) without a reload`, flags);
  });
  for (const event of [ProviderEvents.Error, ProviderEvents.Stale]) {
    client.addHandler(event, (details) => {
      state.providerEvents.push({ event, message: (details && details.message) || null });
    });
  }
  await OpenFeature.setProviderAndWait(provider, config.context);
  state.cachedKeys = Object.keys(provider.flagCache).sort();
  state.initial = evaluate(client);
  state.ready = true;
  render('ready', state.initial);
}

main().catch((err) => {
  state.errors.push(`main: ${(err && err.stack) || err}`);
  document.getElementById('status').textContent = `failed: ${err}`;
});
