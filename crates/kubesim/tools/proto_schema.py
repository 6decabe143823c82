#!/usr/bin/env python3
"""Writes kubesim's protobuf schema table (src/protobuf/schema.txt).

kubectl sends built-in objects as Kubernetes protobuf. kubesim decodes them with a
table of field numbers taken from the `generated.proto` files of k8s.io/api and
k8s.io/apimachinery, joined with the Go struct tags of the same packages, which say
what the .proto files cannot: the JSON name, whether a struct is inlined in JSON, and
whether a scalar is a pointer (so an explicit zero must be kept).

Usage: proto_schema.py API_MODULE_DIR APIMACHINERY_MODULE_DIR > src/protobuf/schema.txt
where the directories are the module roots of k8s.io/api and k8s.io/apimachinery at
the version named in the header (`go mod download -json k8s.io/api@VERSION` prints one).
"""
import os
import re
import sys

VERSION = "v0.34.4"

# Kinds kubesim serves; everything reachable from them is decoded.
ROOTS = [
    "api.core.v1.Namespace", "api.core.v1.Pod", "api.core.v1.Service",
    "api.core.v1.Endpoints", "api.core.v1.Event", "api.core.v1.ConfigMap",
    "api.core.v1.Secret", "api.core.v1.ServiceAccount", "api.core.v1.Node",
    "api.apps.v1.Deployment", "api.autoscaling.v1.Scale",
    "api.discovery.v1.EndpointSlice", "api.events.v1.Event", "api.coordination.v1.Lease",
    "api.rbac.v1.Role", "api.rbac.v1.RoleBinding", "api.rbac.v1.ClusterRole",
    "api.rbac.v1.ClusterRoleBinding",
]

# Messages whose JSON form is not their fields; the decoder handles them by name.
SPECIAL = {
    "apimachinery.pkg.apis.meta.v1.Time", "apimachinery.pkg.apis.meta.v1.MicroTime",
    "apimachinery.pkg.apis.meta.v1.Duration", "apimachinery.pkg.apis.meta.v1.FieldsV1",
    "apimachinery.pkg.api.resource.Quantity", "apimachinery.pkg.util.intstr.IntOrString",
    "apimachinery.pkg.runtime.RawExtension",
}

SCALARS = {"string", "bool", "int32", "int64", "bytes", "double", "float"}

FIELD = re.compile(r"^\s*(optional|repeated|required)?\s*(map<\s*string\s*,\s*([\w.]+)\s*>|[\w.]+)\s+(\w+)\s*=\s*(\d+)\s*;")


def short(full):
    return full[len("k8s.io."):] if full.startswith("k8s.io.") else full


def parse_protos(root):
    """message name -> (package dir, [(number, proto name, repeated, map, type)])."""
    messages = {}
    for dirpath, _, files in os.walk(root):
        if "generated.proto" not in files:
            continue
        text = open(os.path.join(dirpath, "generated.proto")).read()
        package = re.search(r"^package ([\w.]+);", text, re.M).group(1)
        current = None
        for line in text.splitlines():
            m = re.match(r"^message (\w+) \{", line)
            if m:
                current = short(package + "." + m.group(1))
                messages[current] = (dirpath, [])
                continue
            if line.startswith("}"):
                current = None
                continue
            if current is None:
                continue
            f = FIELD.match(line)
            if not f:
                continue
            label, typ, map_value, name, number = f.groups()
            is_map = map_value is not None
            typ = map_value if is_map else typ
            if typ not in SCALARS:
                typ = short(typ.lstrip(".")) if "." in typ else short(package + "." + typ)
            messages[current][1].append((int(number), name, label == "repeated", is_map, typ))
    return messages


def go_structs(dirpath):
    """struct name -> {field number: (json name, inline, pointer)} from Go struct tags."""
    structs = {}
    for name in sorted(os.listdir(dirpath)):
        if not name.endswith(".go") or name.endswith("_test.go") or name.startswith(("zz_", "generated")):
            continue
        current = None
        for line in open(os.path.join(dirpath, name)):
            m = re.match(r"^type (\w+) struct \{", line)
            if m:
                current = structs.setdefault(m.group(1), {})
                continue
            if line.startswith("}"):
                current = None
                continue
            if current is None or "protobuf:\"" not in line:
                continue
            decl, _, tags = line.partition("`")
            parts = decl.split()
            go_type = parts[-1] if parts else ""
            proto = re.search(r'protobuf:"(\w+),(\d+)', tags)
            if proto is None:
                continue  # a comment that mentions a tag
            proto = proto.group(2)
            js = re.search(r'json:"([^"]*)"', tags)
            js_name = js.group(1).split(",")[0] if js else ""
            inline = js is not None and ",inline" in js.group(1) and js_name == ""
            current[int(proto)] = (js_name, inline, go_type.startswith("*"))
    return structs


def main():
    messages = parse_protos(sys.argv[1])
    messages.update(parse_protos(sys.argv[2]))
    structs_by_dir = {}
    seen, queue, out = set(), list(ROOTS), []
    while queue:
        msg = queue.pop(0)
        if msg in seen or msg in SPECIAL:
            continue
        seen.add(msg)
        if msg not in messages:
            sys.exit(f"no message {msg} in the .proto files")
        dirpath, fields = messages[msg]
        go = structs_by_dir.setdefault(dirpath, go_structs(dirpath)).get(msg.rsplit(".", 1)[1])
        if go is None:
            sys.exit(f"no Go struct for {msg}: add it to SPECIAL with a decoder rule")
        out.append(f"message {msg}")
        for number, proto_name, repeated, is_map, typ in fields:
            if number not in go:
                sys.exit(f"{msg} field {number} ({proto_name}) has no Go struct tag")
            js_name, inline, pointer = go[number]
            if typ not in SCALARS:
                queue.append(typ)
            shape = "{}" if is_map else "[]" if repeated else ""
            flags = ("*" if pointer else "")
            out.append(f"{number} {'-' if inline else js_name} {shape}{typ}{(' ' + flags) if flags else ''}")
    print(f"# Generated by tools/proto_schema.py from k8s.io/api and k8s.io/apimachinery {VERSION}; do not edit.")
    print("# `message NAME`, then one line per field: NUMBER JSON-NAME ([]repeated|{}map of string to)TYPE [* pointer];")
    print("# JSON-NAME `-` is a struct inlined in its parent's JSON.")
    print("\n".join(out))


main()
