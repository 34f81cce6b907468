#!/usr/bin/env bash
# Train the demo config on each input stream, evaluate each, and fuse the four (weights 2 2 1 1).
# Prints each stream's validation top-1 and the fusion's. Run from the project root after `make demo`
# (which writes data/action/demo_synthetic.pkl). Outputs in checkpoint/streams/.
set -euo pipefail
PY=${PY:-.venv/bin/python}
FLAGS=(--config configs/action/demo_synthetic.yaml --hyper_cfg hyper_config/method2/manual_joint_label1.yaml
       --hyper_relation_bias uniform --version 2)
OUT=checkpoint/streams
mkdir -p "$OUT"
for stream in joint bone joint_motion bone_motion; do
  echo "training the $stream stream (log: $OUT/$stream.log)"
  "$PY" train_action.py "${FLAGS[@]}" --checkpoint "$OUT/$stream" --set stream=$stream > "$OUT/$stream.log" 2>&1
  "$PY" evaluate_action.py "${FLAGS[@]}" --set stream=$stream --evaluate "$OUT/$stream/best_epoch.bin" \
    --out-dir "$OUT/$stream/eval" --save-scores "$OUT/scores/$stream.npz" 2>/dev/null
done
"$PY" evaluate_action.py --config configs/action/demo_synthetic.yaml --out-dir "$OUT/fused" \
  --ensemble "$OUT"/scores/{joint,bone,joint_motion,bone_motion}.npz --weights 2 2 1 1 2>/dev/null
for run in joint bone joint_motion bone_motion; do
  "$PY" -c "import json,sys; m=json.load(open(sys.argv[1])); print(f'{sys.argv[2]:<14} top-1 {m[\"top1\"]:.2f}')" \
    "$OUT/$run/eval/metrics.json" "$run"
done
"$PY" -c "import json,sys; m=json.load(open(sys.argv[1])); print(f'fused 2:2:1:1  top-1 {m[\"top1\"]:.2f}')" \
  "$OUT/fused/metrics.json"
