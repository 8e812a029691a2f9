"""OpenFeature's Python SDK with its OFREP provider, unmodified, pointed at
readyd's HTTP surface. Evaluates every case of cases.json and prints one
JSON line with the answers.

Usage: python ofrep_client.py BASE_URL CASES_JSON
"""

import json
import sys

from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext


def main():
    base_url = sys.argv[1]
    with open(sys.argv[2], encoding="utf-8") as handle:
        cases = json.load(handle)
    api.set_provider_and_wait(OFREPProvider(base_url=base_url))
    client = api.get_client()
    getters = {
        "boolean": client.get_boolean_details,
        "string": client.get_string_details,
        "object": client.get_object_details,
        # OFREP carries a number as JSON does, so this provider checks an
        # integer against int and a fraction against float: a number case
        # asks with the type of its default, as an application would.
        "number": client.get_float_details,
        "integer": client.get_integer_details,
    }
    answers = []
    for case in cases:
        context = EvaluationContext(targeting_key=case["user"], attributes={"roles": case["roles"]})
        kind = case["kind"]
        if kind == "number" and isinstance(case["default"], int):
            kind = "integer"
        details = getters[kind](case["key"], case["default"], context)
        answers.append(
            {
                "value": details.value,
                "variant": details.variant,
                "reason": details.reason,
                "error_code": details.error_code.value if details.error_code else None,
            }
        )
    print(json.dumps({"answers": answers}), flush=True)
    api.shutdown()


if __name__ == "__main__":
    main()
