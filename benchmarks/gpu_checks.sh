#!/usr/bin/env bash
# The GPU figures of benchmarks/RESULTS.md (H100/H200; roughly 15 minutes in all): throughput of ResNet-18 at 112 px
# and ResNet-50 at 224 px with bf16, then the paper's ResNet-50 recipe (30 epochs, 224 px) end to end, timed.
#
#   FER2013_PATH=/path/to/fer2013.npz bash benchmarks/gpu_checks.sh OUT_DIR [PRETRAINED]
#
# PRETRAINED (default false) is passed to --pretrained: the recipe's ImageNet weights need the Hub (or a local copy
# given as --model_name_or_path); random init times the same arithmetic but does not reach the paper's accuracy.
set -euo pipefail
out=${1:-gpu_results}
pretrained=${2:-false}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"

python benchmarks/throughput.py --model resnet18 --image_size 112 --device cuda --bf16 --channels_last \
    --batch_size 256 --eval_batch_size 512 --steps 30 --repeats 3 --json "$out/resnet18_112.json" \
    | tee "$out/resnet18_112.txt"
python benchmarks/throughput.py --model resnet50 --image_size 224 --device cuda --bf16 --channels_last \
    --batch_size 64 --eval_batch_size 256 --steps 30 --repeats 3 --json "$out/resnet50_224.json" \
    | tee "$out/resnet50_224.txt"

# The paper's recipe as configs/paper_resnet50.yaml has it, on the batch pipeline (augment_on auto = device).
start=$(date +%s)
python -m fer_hf.train --config configs/paper_resnet50.yaml --dataset "${FER2013_PATH}" --pretrained "$pretrained" \
    --bf16 true --channels_last true --dataloader_num_workers 0 --disable_tqdm true \
    --output_dir "$out/paper_resnet50" 2>&1 | tail -40 | tee "$out/paper_resnet50.txt"
echo "paper_resnet50 wall seconds: $(( $(date +%s) - start ))" | tee -a "$out/paper_resnet50.txt"
