#!/usr/bin/env bash
# Regenerates the walkthrough output shown in docs/update.md, on the mini world (no downloads).
# Usage: docs/update_walkthrough.sh [WORKDIR]   (default: a fresh folder under /tmp; the first run on a machine
# also builds the cached mini base model, a few minutes). Every command it runs is echoed with its output.
set -uo pipefail
FIF=${FIF:-fif}
W=${1:-$(mktemp -d /tmp/fif-update-walkthrough.XXXX)}
mkdir -p "$W" && cd "$W" || exit 1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
step() { echo "\$ fif $*"; $FIF "$@" 2>&1 | grep -v '^WARNING:root:No pretrained'; LAST=${PIPESTATUS[0]}; echo "(exit $LAST)"; echo; }

step data materialize mini mat --datasets mini_digits,mini_letters,mini_novel_shapes,mini_fills --splits train,test
# the default gate: A_ZS may drop at most 1 point per update
step update init --out models/acme --recipe mini --pretrained mini-base
step update apply models/acme --data mat/mini_digits --dry-run
# three updates; a candidate the gate holds is promoted by hand, as an operator would after reading the report
for d in mini_digits mini_letters mini_novel_shapes; do
  step update apply models/acme --data mat/$d --no-progress
  if [ "$LAST" = 3 ]; then step update promote models/acme "$($FIF update log models/acme --json | python3 -c \
      'import json,sys; print(json.load(sys.stdin)[-1]["version"])')" --reason "accepted after reading the gate report"; fi
done
step update log models/acme
# the score table is full (each apply backfilled the other versions on its data): nothing left to score
step update eval models/acme
# an update on some classes of a folder only: the plan
step update apply models/acme --data mat/mini_fills --concepts dotted,hatched --dry-run
# a destructive learning rate: 1000x the mini preset's 2e-4 (100x, 2e-2, was measured on mini v3 and did not
# harm A_ZS under the EMA merge: docs/update.md). Is the candidate held by the gate?
step update apply models/acme --data mat/mini_fills --no-progress train.lr=2e-1
step update log models/acme
step update diff models/acme v1.3 v1.4
step update rollback models/acme --reason "back to the previous release (a demonstration)"
step update log models/acme
step update plan models/acme
step update export models/acme v1.2 -o acme-v1.2.safetensors
# the lineage as one run: v1.3's config.yaml is the 3-task stream; its final weights equal v1.3's
step run --no-progress --preset models/acme/versions/v1.3/config.yaml --out runs/as-one-run
cmp models/acme/versions/v1.3/model.safetensors runs/as-one-run/final.safetensors && echo "v1.3 == the 3-task run's final.safetensors (byte for byte)"
