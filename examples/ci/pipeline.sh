#!/bin/sh
# From CI to the fleet: build an image from a recipe, prove it by booting
# it, publish it to imaged serve, start a rollout to a canary group.
#
#   IMAGED_SERVER=https://imaged:8081 IMAGED_FINGERPRINT=sha256:... IMAGED_TOKEN_FILE=ci.token examples/ci/pipeline.sh
#
# Environment (all but the first two have defaults):
#   IMAGED_SERVER, IMAGED_TOKEN_FILE  the fleet server's admin address (imaged serve --admin)
#                                     and a token file of its tokens
#   IMAGED_FINGERPRINT or IMAGED_CA    for https: the pinned certificate or its CA
#   RECIPE          the recipe (default: web.yaml beside this script)
#   VERSION         the image's version (default: git describe, else the time)
#   OUT             where the image goes (default: out)
#   SIGN_KEY        an ed25519 key (mkimage keygen) that signs the manifest
#   HEALTH          an agent.yaml whose health: section mkimage test checks
#                   (default: agent.yaml beside the recipe when there is one)
#   CANARY_GROUP    the group the rollout starts in (default: canary)
#   CANARY_PERCENT  its share of that group (default: 100)
#   SOURCE_DATE_EPOCH  default: the last commit's time, so a rebuild is the same image
#
# mkimage and imaged must be on PATH. A recipe that takes files/imaged and
# files/hnboot-agent.service (as web.yaml does) gets this imaged, the one
# that talks to the server, and the repository's unit for it.
# Each step's failure stops the pipeline with its exit status: mkimage test
# exits 1 for an unhealthy image, 3 when it could not test.
set -eu

: "${IMAGED_SERVER:?set IMAGED_SERVER to the fleet server, e.g. https://imaged:8081 (imaged serve --admin)}"
: "${IMAGED_TOKEN_FILE:?set IMAGED_TOKEN_FILE to a file holding an admin token}"
export IMAGED_SERVER IMAGED_TOKEN_FILE
here=$(cd "$(dirname "$0")" && pwd)
RECIPE=${RECIPE:-$here/web.yaml}
dir=$(cd "$(dirname "$RECIPE")" && pwd)
VERSION=${VERSION:-$(git -C "$dir" describe --always --dirty 2>/dev/null || date -u +%Y%m%d%H%M%S)}
OUT=${OUT:-out}
CANARY_GROUP=${CANARY_GROUP:-canary}
CANARY_PERCENT=${CANARY_PERCENT:-100}
if [ -z "${HEALTH:-}" ] && [ -f "$dir/agent.yaml" ]; then HEALTH=$dir/agent.yaml; fi
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$dir" log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH

step() { echo "pipeline: $*" >&2; }

if grep -q 'source: *files/imaged' "$RECIPE"; then
  mkdir -p "$dir/files"
  cp "$(command -v imaged)" "$dir/files/imaged"
fi
if grep -q 'source: *files/hnboot-agent.service' "$RECIPE"; then
  mkdir -p "$dir/files"
  cp "$here/../../scripts/hnboot-agent.service" "$dir/files/hnboot-agent.service"
fi

mkdir -p "$OUT"
img=$OUT/image-$VERSION.img
step "build $RECIPE as version $VERSION"
mkimage build "$RECIPE" --out "$img" --version "$VERSION" ${SIGN_KEY:+--sign-key "$SIGN_KEY"}
name=$(sed -n 's/^ *"name": *"\([^"]*\)".*/\1/p' "$img.json")

step "test $img"
mkimage test "$img" ${HEALTH:+--health "$HEALTH"} --json > "$img.test.json"

step "publish $name@$VERSION to $IMAGED_SERVER"
imaged fleet publish "$img"

step "rollout $name-$VERSION: $name@$VERSION to $CANARY_PERCENT% of group $CANARY_GROUP"
imaged fleet rollout --name "$name-$VERSION" --image "$name@$VERSION" --group "$CANARY_GROUP" --percent "$CANARY_PERCENT"
step "done: $name@$VERSION is rolling out"
