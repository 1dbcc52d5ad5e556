#!/bin/bash
# The GPU part of issue #11, as one command for the lent GPU machine (no DVC, MLflow or network):
#   A. the knob grid on the built-in sample (64 px): baseline, EMA, 6-view TTA, self-blending,
#      rgb+npr and ConvNeXt-atto, each left out of every manipulation, seeds 0-2, fp32;
#   B. ResNet-18 vs ConvNeXt-T on a generated multiFFDI-sized set (512 px JPEGs, 20k train),
#      splice held out, bf16: training img/s and held-out AUC.
# Results (small) go to $OUT/{knobs,big}; images and checkpoints to $WORK.
#   OUT=/tmp/o WORK=/tmp/w SCALE=tiny bash benchmarks/studies/gpu_generalisation.sh   # a quick CPU rehearsal
set -u
OUT=${OUT:?set OUT}; WORK=${WORK:-/tmp/ffdi_grid}; SCALE=${SCALE:-full}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} TQDM_DISABLE=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$WORK"
nproc; nvidia-smi -L 2>/dev/null
python -c "import torch, torchvision, timm, sklearn, skimage; print('torch', torch.__version__, 'tv', torchvision.__version__, 'timm', timm.__version__, 'skimage', skimage.__version__, 'cuda', torch.cuda.is_available())"
if [ "$SCALE" = tiny ]; then
  B_SAMPLE="--sample sample.size=128 --sample sample.n_train=300 --sample sample.n_val=80"
  B_SET="--set augment.resize=64 --set augment.image_size=64 --set train.epochs=1 --set runtime.threads=1 --set runtime.workers=1"
  B_ARCH=convnext_atto; A_SAMPLE="--sample sample.n_train=240 --sample sample.n_val=80"; A_SET="--set train.epochs=1"
  A_SEEDS="0"; A_JOBS=2; B_TIMEOUT=300; A_TIMEOUT=600; A_DEADLINE=4
else
  B_SAMPLE="--sample sample.size=512 --sample sample.n_train=20000 --sample sample.n_val=2000"
  B_SET="--set augment.resize=256 --set augment.image_size=256 --set train.batch_size=64 --set runtime.threads=2 --set runtime.workers=14"
  B_ARCH=convnext_tiny; A_SAMPLE=""; A_SET=""; A_SEEDS="0 1 2"; A_JOBS=8; B_TIMEOUT=250; A_TIMEOUT=270; A_DEADLINE=3.3
fi

echo "=== B $(date +%T)"
timeout $B_TIMEOUT python -m benchmarks.studies.generalisation_grid run --out "$OUT/big" --work "$WORK/big" \
  $B_SAMPLE --sample sample.n_test=0 $B_SET --set eval.degradations=[] \
  --holdouts splice --seeds 0 --jobs 1 --deadline-min 2.3 \
  --variant resnet18 --variant "$B_ARCH:model.arch=$B_ARCH" 2>&1 | tee "$OUT/big.log" | grep -v "^ *$" | tail -20
rm -rf "$WORK/big"

echo "=== A $(date +%T)"
timeout $A_TIMEOUT python -m benchmarks.studies.generalisation_grid run --out "$OUT/knobs" --work "$WORK/knobs" \
  $A_SAMPLE --sample sample.n_test=0 $A_SET --set train.amp=off --set runtime.threads=1 --set runtime.workers=1 \
  --set eval.degradations=[] --seeds $A_SEEDS --jobs $A_JOBS --deadline-min $A_DEADLINE \
  --variant baseline --variant ema:train.ema=0.999 --variant "tta6:predict.tta=[hflip,vflip,rot90,rot180,rot270]" \
  --variant self_blend:augment.self_blend=0.5 --variant npr:model.input=rgb+npr \
  --variant convnext_atto:model.arch=convnext_atto > "$OUT/knobs.log" 2>&1
grep "held-out\|FAILED\|skipped\|done in\|generated" "$OUT/knobs.log" | tail -30
echo "=== end $(date +%T)"
