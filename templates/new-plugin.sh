#!/usr/bin/env bash
# Makes a new switchyard plugin from templates/plugin: a crate that builds, loads into the
# daemon, and passes its own test as made.
#
#   bash templates/new-plugin.sh NAME [FOLDER]
#
# NAME is the plugin's name and Upgrade token (lower-case letters, digits and -); the crate
# is made in FOLDER/NAME (default: the current folder). It depends on this checkout's
# protocol-api by path; with SWITCHYARD_PROTOCOL_API_VERSION=0.1 (say) on the published
# crate instead.
set -euo pipefail
name=${1:?usage: new-plugin.sh NAME [FOLDER]}
into=${2:-.}
if ! [[ $name =~ ^[a-z][a-z0-9-]*$ ]]; then
  echo "new-plugin.sh: $name: use lower-case letters, digits and '-' (it is an Upgrade token)" >&2
  exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
target="$into/$name"
if [ -e "$target" ]; then
  echo "new-plugin.sh: $target already exists" >&2
  exit 2
fi
if [ -n "${SWITCHYARD_PROTOCOL_API_VERSION:-}" ]; then
  dependency="protocol-api = \"$SWITCHYARD_PROTOCOL_API_VERSION\""
else
  dependency="protocol-api = { path = \"$(dirname "$here")/protocol-api\" }"
fi
crate=${name//-/_}
prefix=$(printf '%s' "$crate" | tr '[:lower:]' '[:upper:]')
mkdir -p "$target"
cp -R "$here/plugin/." "$target/"
find "$target" -type f -print0 | while IFS= read -r -d '' file; do
  sed -i \
    -e "s|{{name}}|$name|g" \
    -e "s|{{crate}}|$crate|g" \
    -e "s|{{setting_prefix}}|$prefix|g" \
    -e "s|{{protocol_api}}|$dependency|g" \
    "$file"
done
echo "made $target: cd $target && cargo test && cargo build --release"
