#!/usr/bin/env bash
# Set everything up and run mpseal's main job end to end on the embedded default:
# a new project -> signed build -> host-side verify -> the virtual board runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
M=.venv/bin/mpseal
DEMO=${1:-demo}
if [ -e "$DEMO/mpseal.toml" ]; then
    echo "== reusing the project in $DEMO (delete the folder for a fresh start)"
else
    echo "== mpseal init $DEMO --board unix"
    $M init "$DEMO" --board unix --name demo
fi
echo "== mpseal build"
$M build -C "$DEMO"
ART=$(ls -t "$DEMO"/dist/*.mpseal | head -n 1)
echo "== mpseal verify $ART"
$M verify "$ART" -C "$DEMO"
echo "== mpseal inspect $ART"
$M inspect "$ART"
if [ ! -e "$DEMO/sim/default/flash.img" ]; then
    echo "== mpseal sim create"
    $M sim create --sim "$DEMO/sim/default"
fi
echo "== mpseal sim install $ART   (the board's boot guard verifies and stages it)"
$M sim install "$ART" --sim "$DEMO/sim/default" -C "$DEMO"
echo "== mpseal sim boot   (verified boot: trial, the app confirms, committed)"
$M sim boot --sim "$DEMO/sim/default"
echo "== mpseal sim status"
$M sim status --sim "$DEMO/sim/default"
echo "== done: the signed app ran on the virtual board"
