#!/usr/bin/env python3
"""Generate the protobuf modules and type stubs of ``proto/*.proto``, and the web chat's schema.

Writes ``<name>_pb2.py`` (protoc's Python output) and ``<name>_pb2.pyi`` (mypy-protobuf's stubs)
into ``src/imreactor/pdu/proto/`` and removes generated files whose ``.proto`` is gone; and
``src/imreactor/web/proto/im.json``, the same schema in protobufjs's JSON form (built from the
descriptors protoc produced), which the web chat loads at ``/proto/im.json``. The generated
files are never edited by hand: change a ``.proto`` file and run this script.

    .venv/bin/python scripts/gen_proto.py           # regenerate in place
    .venv/bin/python scripts/gen_proto.py --check   # exit 1 if the committed files are stale

The generators are pinned in the ``dev`` dependencies of pyproject.toml and this script refuses
to run with other versions, so that every machine produces byte-identical output: protoc stamps
its version into each module, and the protobuf runtime refuses gencode newer than itself.

Post-processing, applied identically in both modes:
- protoc writes ``import im_base_define_pb2`` for a dependency, which only works with the output
  directory on ``sys.path``; such imports of sibling generated modules become
  ``from . import ...`` so that the modules work as the package ``imreactor.pdu.proto``.
- the module name that protoc passes to the descriptor builder (it becomes the classes'
  ``__module__``) is made the fully qualified package name.

The JSON form (:func:`protobufjs_schema`) has every enum and message of every package, type
names fully qualified (``.IM.BaseDefine.UserInfo``), proto2 labels as ``rule``, repeated
scalars marked ``packed: false`` (proto2's encoding, which protobufjs would otherwise not use),
defaults as the ``default`` option, and each PDU message's command id as the option
``(IM.BaseDefine.command_id)``; the service id is its high byte.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.resources
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "src" / "imreactor" / "pdu" / "proto"
OUT_PACKAGE = "imreactor.pdu.proto"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi")
WEB_OUT = ROOT / "src" / "imreactor" / "web" / "proto" / "im.json"
DESCRIPTOR_SET = "schema.pb"
#: The field number of the ``(IM.BaseDefine.command_id)`` message option.
COMMAND_ID_OPTION = 50001
WEB_NAME = "web:im.json"
PINNED_GENERATORS = ("grpcio-tools", "mypy-protobuf")


class GenerationError(Exception):
    """The generators are missing, have the wrong version, or failed."""


def pinned_versions() -> dict[str, str]:
    """Return ``{distribution: version}`` of the generators pinned in pyproject's dev list."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        dev = tomllib.load(f)["project"]["optional-dependencies"]["dev"]
    pins: dict[str, str] = {}
    for requirement in dev:
        name, sep, version = str(requirement).partition("==")
        if sep and name.strip() in PINNED_GENERATORS:
            pins[name.strip()] = version.strip()
    missing = set(PINNED_GENERATORS) - pins.keys()
    if missing:
        raise GenerationError(f"pyproject.toml pins no version of {sorted(missing)}")
    return pins


def check_generator_versions() -> None:
    """Raise GenerationError unless the installed generators are exactly the pinned ones."""
    for name, wanted in pinned_versions().items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            message = f"{name}=={wanted} is not installed (run scripts/setup.sh)"
            raise GenerationError(message) from None
        if installed != wanted:
            raise GenerationError(f"{name} {installed} is installed, pyproject.toml pins {wanted}")


def find_mypy_plugin() -> Path:
    """Return the protoc-gen-mypy executable that belongs to this interpreter's environment."""
    found = shutil.which("protoc-gen-mypy", path=str(Path(sys.executable).parent))
    if found is None:
        found = shutil.which("protoc-gen-mypy")
    if found is None:
        raise GenerationError("protoc-gen-mypy not found (mypy-protobuf is not installed)")
    return Path(found)


def run_protoc(proto_files: list[Path], out_dir: Path) -> None:
    """Run the pinned protoc with the Python and mypy outputs (and the descriptor set of
    ``proto_files``, as :data:`DESCRIPTOR_SET`) into ``out_dir``."""
    # descriptor.proto (imported by im_base_define.proto) ships inside grpcio-tools.
    well_known = Path(str(importlib.resources.files("grpc_tools") / "_proto"))
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTO_DIR}",
        f"--proto_path={well_known}",
        f"--plugin=protoc-gen-mypy={find_mypy_plugin()}",
        f"--python_out={out_dir}",
        f"--mypy_out=quiet:{out_dir}",
        f"--descriptor_set_out={out_dir / DESCRIPTOR_SET}",
        *(str(p.relative_to(PROTO_DIR)) for p in proto_files),
    ]
    result = subprocess.run(command, cwd=PROTO_DIR, capture_output=True, text=True, check=False)
    if result.returncode != 0 or result.stderr.strip():
        raise GenerationError(f"protoc failed ({result.returncode}):\n{result.stderr}")


def fix_up(text: str, module: str, siblings: set[str]) -> str:
    """Apply the post-processing described in the module docstring to one generated file."""

    def relative_import(match: re.Match[str]) -> str:
        name, alias = match.group(1), match.group(2) or ""
        if name not in siblings:
            return match.group(0)
        return f"from . import {name}{alias}"

    text = re.sub(r"^import (\w+_pb2)( as \w+)?$", relative_import, text, flags=re.MULTILINE)
    return text.replace(
        f"BuildTopDescriptorsAndMessages(DESCRIPTOR, '{module}', _globals)",
        f"BuildTopDescriptorsAndMessages(DESCRIPTOR, '{OUT_PACKAGE}.{module}', _globals)",
    )


def _command_id(options: bytes) -> int | None:
    """The ``(IM.BaseDefine.command_id)`` varint in a serialized ``MessageOptions``, if any.

    Read from the bytes because the descriptor classes do not know our extension.
    """

    def varint(pos: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            byte = options[pos]
            value |= (byte & 0x7F) << shift
            pos, shift = pos + 1, shift + 7
            if byte < 0x80:
                return value, pos

    pos = 0
    while pos < len(options):
        tag, pos = varint(pos)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            value, pos = varint(pos)
            if number == COMMAND_ID_OPTION:
                return int(value)
        elif wire_type == 2:
            size, pos = varint(pos)
            pos += size
        elif wire_type == 5:
            pos += 4
        elif wire_type == 1:
            pos += 8
        else:
            raise GenerationError(f"unexpected wire type {wire_type} in message options")
    return None


def protobufjs_schema(descriptor_set: bytes) -> dict[str, Any]:
    """The schema of ``descriptor_set`` (a serialized FileDescriptorSet) as protobufjs JSON."""
    from google.protobuf import descriptor_pb2

    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set)
    fdp = descriptor_pb2.FieldDescriptorProto
    labels = {fdp.LABEL_REQUIRED: "required", fdp.LABEL_OPTIONAL: "optional"}
    labels[fdp.LABEL_REPEATED] = "repeated"
    scalars = {
        value: name.removeprefix("TYPE_").lower()
        for name, value in fdp.Type.items()
        if name not in ("TYPE_MESSAGE", "TYPE_ENUM", "TYPE_GROUP")
    }

    def convert(message: Any) -> dict[str, Any]:
        """One message, with its own nested messages and enums under ``nested``."""
        fields: dict[str, Any] = {}
        for field in message.field:
            entry: dict[str, Any] = {
                "rule": labels[field.label],
                "type": field.type_name or scalars[field.type],
                "id": field.number,
            }
            options: dict[str, Any] = {}
            if field.label == fdp.LABEL_REPEATED and not field.type_name:
                options["packed"] = False
            if field.HasField("default_value"):
                options["default"] = field.default_value
            if options:
                entry["options"] = options
            fields[field.name] = entry
        converted: dict[str, Any] = {"fields": fields}
        command = _command_id(message.options.SerializeToString())
        if command is not None:
            converted["options"] = {"(IM.BaseDefine.command_id)": command}
        inner: dict[str, Any] = {
            enum.name: {"values": {v.name: v.number for v in enum.value}}
            for enum in message.enum_type
        }
        inner.update({m.name: convert(m) for m in message.nested_type})
        if inner:
            converted["nested"] = inner
        return converted

    root: dict[str, Any] = {}
    for file in sorted(fds.file, key=lambda f: f.package):
        if file.package.startswith("google."):
            continue
        package = root
        for part in file.package.split("."):
            package = package.setdefault("nested", {}).setdefault(part, {})
        nested = package.setdefault("nested", {})
        for enum in file.enum_type:
            nested[enum.name] = {"values": {v.name: v.number for v in enum.value}}
        for message in file.message_type:
            nested[message.name] = convert(message)
    return root


def generate() -> dict[str, bytes]:
    """Generate every module and stub and the JSON schema; return ``{file name: content}``
    (names relative to the Python output directory, the JSON's as ``web:im.json``)."""
    check_generator_versions()
    proto_files = sorted(PROTO_DIR.glob("*.proto"))
    if not proto_files:
        raise GenerationError(f"no .proto files in {PROTO_DIR}")
    siblings = {p.stem + "_pb2" for p in proto_files}
    files: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="gen_proto.") as tmp:
        out_dir = Path(tmp)
        run_protoc(proto_files, out_dir)
        schema = protobufjs_schema((out_dir / DESCRIPTOR_SET).read_bytes())
        text = json.dumps(schema, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
        files[WEB_NAME] = text.encode("utf-8")
        for path in sorted(out_dir.iterdir()):
            if path.name == DESCRIPTOR_SET:
                continue
            if not path.name.endswith(GENERATED_SUFFIXES):
                raise GenerationError(f"unexpected generator output {path.name}")
            module = path.name.rsplit(".", 1)[0]
            text = fix_up(path.read_text(encoding="utf-8"), module, siblings)
            files[path.name] = text.encode("utf-8")
    return files


def committed_files() -> dict[str, bytes]:
    """Return ``{file name: content}`` of the generated files now in the output directories."""
    files: dict[str, bytes] = {}
    if WEB_OUT.is_file():
        files[WEB_NAME] = WEB_OUT.read_bytes()
    if OUT_DIR.is_dir():
        files.update(
            (p.name, p.read_bytes())
            for p in sorted(OUT_DIR.iterdir())
            if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)
        )
    return files


def target(name: str) -> Path:
    """Where the generated file ``name`` (a key of :func:`generate`) goes."""
    return WEB_OUT if name == WEB_NAME else OUT_DIR / name


def main(argv: list[str] | None = None) -> int:
    """Regenerate (or with --check, compare); return the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="regenerate into a temporary directory and fail if the committed files differ",
    )
    args = parser.parse_args(argv)
    try:
        fresh = generate()
    except GenerationError as e:
        print(f"gen_proto: {e}", file=sys.stderr)
        return 2
    current = committed_files()
    names = fresh.keys() | current.keys()
    stale = sorted(name for name in names if fresh.get(name) != current.get(name))
    if args.check:
        for name in stale:
            if name not in current:
                state = "missing"
            else:
                state = "obsolete" if name not in fresh else "differs"
            print(f"gen_proto: {target(name).relative_to(ROOT)} {state}", file=sys.stderr)
        if stale:
            print("gen_proto: run scripts/gen_proto.py and commit the result", file=sys.stderr)
            return 1
        return 0
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    WEB_OUT.parent.mkdir(parents=True, exist_ok=True)
    for name in stale:
        path = target(name)
        if name in fresh:
            path.write_bytes(fresh[name])
        else:
            path.unlink()
    print(f"gen_proto: {len(fresh)} files, {len(stale)} updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
