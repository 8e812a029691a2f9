#!/usr/bin/env bash
# Installs the OpenFeature SDKs used by tests/openfeature_interop.rs and
# tests/ofrep_browser.rs, and the accessibility checker tests/console_browser.rs
# injects, pinned, under target/interop (kept between runs; reinstalled when a
# pin changes).
#   - Python: openfeature-sdk with openfeature-provider-flagd (gRPC resolver)
#     and openfeature-provider-ofrep
#   - Node.js: @openfeature/server-sdk with @openfeature/flagd-provider and
#     @openfeature/ofrep-provider (package.json)
#   - the browser: @openfeature/web-sdk with @openfeature/ofrep-web-provider
#     (ofrep_web/package.json), a project of its own because the web
#     provider needs @openfeature/ofrep-core 2.x and the Node.js OFREP
#     provider 0.1.x
#   - axe-core (console_web/package.json)
# Prints nothing on success but the tools' own errors.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
dir="$root/target/interop"
here="$root/tests/interop"
mkdir -p "$dir"
# Test runners that start each test as its own process may run this twice
# at once: one installs, the other waits for it.
exec 9>"$dir/.lock"
flock 9

python_pins="openfeature-sdk==0.10.0 openfeature-provider-flagd==0.6.1 openfeature-provider-ofrep==0.3.0"
if [ "$(cat "$dir/python.pins" 2>/dev/null)" != "$python_pins" ]; then
    rm -rf "$dir/venv"
    python3 -m venv "$dir/venv"
    # shellcheck disable=SC2086
    "$dir/venv/bin/pip" install --quiet --disable-pip-version-check $python_pins
    echo "$python_pins" > "$dir/python.pins"
fi

if ! cmp -s "$here/package.json" "$dir/node/package.json" 2>/dev/null \
    || [ ! -d "$dir/node/node_modules/@openfeature/flagd-provider" ] \
    || [ ! -d "$dir/node/node_modules/@openfeature/ofrep-provider" ]; then
    rm -rf "$dir/node"
    mkdir -p "$dir/node"
    cp "$here/package.json" "$dir/node/package.json"
    (cd "$dir/node" && npm install --silent --no-audit --no-fund >/dev/null)
fi

if ! cmp -s "$here/ofrep_web/package.json" "$dir/web/package.json" 2>/dev/null \
    || [ ! -d "$dir/web/node_modules/@openfeature/ofrep-web-provider" ]; then
    rm -rf "$dir/web"
    mkdir -p "$dir/web"
    cp "$here/ofrep_web/package.json" "$dir/web/package.json"
    (cd "$dir/web" && npm install --silent --no-audit --no-fund >/dev/null)
fi

if ! cmp -s "$here/console_web/package.json" "$dir/console/package.json" 2>/dev/null \
    || [ ! -f "$dir/console/node_modules/axe-core/axe.min.js" ]; then
    rm -rf "$dir/console"
    mkdir -p "$dir/console"
    cp "$here/console_web/package.json" "$dir/console/package.json"
    (cd "$dir/console" && npm install --silent --no-audit --no-fund >/dev/null)
fi
