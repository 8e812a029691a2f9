"""OpenFeature's Python SDK with its flagd provider (gRPC resolver), unmodified,
pointed at readyd. Evaluates every case of cases.json, prints one JSON line
with the answers, then waits for a configuration change and prints the keys
it names.

Usage: python openfeature_client.py PORT CASES_JSON
"""

import json
import sys
import threading

from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEvent


def main():
    port = int(sys.argv[1])
    with open(sys.argv[2], encoding="utf-8") as handle:
        cases = json.load(handle)
    changed = threading.Event()
    changed_keys = []

    def on_change(details):
        changed_keys.extend(details.flags_changed or [])
        changed.set()

    api.set_provider_and_wait(
        FlagdProvider(resolver_type=ResolverType.RPC, host="127.0.0.1", port=port)
    )
    client = api.get_client()
    client.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, on_change)
    getters = {
        "boolean": client.get_boolean_details,
        "string": client.get_string_details,
        "object": client.get_object_details,
        "number": client.get_float_details,
    }
    answers = []
    for case in cases:
        context = EvaluationContext(targeting_key=case["user"], attributes={"roles": case["roles"]})
        details = getters[case["kind"]](case["key"], case["default"], context)
        answers.append(
            {
                "value": details.value,
                "variant": details.variant,
                "reason": details.reason,
                "error_code": details.error_code.value if details.error_code else None,
            }
        )
    print(json.dumps({"answers": answers}), flush=True)
    print("waiting for a change", flush=True)
    if not changed.wait(timeout=20):
        print(json.dumps({"error": "no configuration change within 20 s"}), flush=True)
        api.shutdown()
        sys.exit(1)
    print(json.dumps({"changed": sorted(set(changed_keys))}), flush=True)
    api.shutdown()


if __name__ == "__main__":
    main()
