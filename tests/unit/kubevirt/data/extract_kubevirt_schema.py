"""Extract the OpenAPI definitions a VirtualMachine needs from KubeVirt's
published api/openapi-spec/swagger.json, for offline validation in
tests/unit/kubevirt/test_manifests.py.

    git -C KUBEVIRT show v1.9.0-rc.2:api/openapi-spec/swagger.json > swagger.json
    python extract_kubevirt_schema.py swagger.json v1.9.0-rc.2 > kubevirt-vm-schema.json

The output is KubeVirt's data (Apache-2.0), cut down to the definitions
reachable from v1.VirtualMachine.
"""

import json
import sys


def closure(defs: dict, start: str) -> dict:
    out, todo = {}, [start]
    while todo:
        name = todo.pop()
        if name in out:
            continue
        out[name] = defs[name]
        text = json.dumps(defs[name])
        for ref in text.split('"$ref": "#/definitions/')[1:]:
            todo.append(ref.split('"', 1)[0])
    return out


if __name__ == "__main__":
    swagger = json.load(open(sys.argv[1]))
    defs = closure(swagger["definitions"], "v1.VirtualMachine")
    json.dump(
        {
            "source": f"kubevirt/kubevirt {sys.argv[2]} api/openapi-spec/swagger.json",
            "definitions": defs,
        },
        sys.stdout,
        indent=1,
        sort_keys=True,
    )
    sys.stdout.write("\n")
