"""Validates a bundle's config.json against the OCI runtime-spec JSON schema that
Debian's golang-github-opencontainers-specs-dev installs. Prints each error; exit 1 on any."""
import json, pathlib, sys
import jsonschema

SCHEMA_DIR = pathlib.Path("/usr/share/gocode/src/github.com/opencontainers/runtime-spec/schema")

schema = json.loads((SCHEMA_DIR / "config-schema.json").read_text())
resolver = jsonschema.RefResolver(base_uri=SCHEMA_DIR.as_uri() + "/", referrer=schema)
config = json.loads(pathlib.Path(sys.argv[1]).read_text())
validator = jsonschema.Draft4Validator(schema, resolver=resolver)
errors = sorted(validator.iter_errors(config), key=lambda e: list(e.path))
for e in errors:
    print(f"{'/'.join(str(p) for p in e.path)}: {e.message}")
sys.exit(1 if errors else 0)
