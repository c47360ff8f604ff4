#!/usr/bin/env bash
# MathJax for the book's equations, served from the book itself so that pages read offline render their
# math (Sphinx's default loads MathJax from a CDN at view time). Fetched from the npm registry at set-up,
# pinned by version and SHA-256, and unpacked into book/_static/mathjax/ (git-ignored): only the combined
# TeX/MathML-to-CommonHTML script and the web fonts it loads from beside itself.
#     bash scripts/fetch_mathjax.sh      (make book and make test run it when the files are missing)
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=3.2.2
SHA256=1b9c0a1c44df864e915690558e72adb9cc5203360daefd385084ced3b6c64c09
OUT=book/_static/mathjax
CACHE="${ANNOTATED_LLAMA_CACHE:-$HOME/.cache/annotated-llama}/npm"
TARBALL="$CACHE/mathjax-$VERSION.tgz"

if ! command -v npm >/dev/null; then
    echo "error: npm is needed to fetch MathJax $VERSION. Fix: apt-get install -y npm" >&2
    exit 1
fi
mkdir -p "$CACHE"
if [[ ! -f "$TARBALL" ]] || ! echo "$SHA256  $TARBALL" | sha256sum --check --status; then
    (cd "$CACHE" && npm pack --silent "mathjax@$VERSION" >/dev/null)
fi
if ! echo "$SHA256  $TARBALL" | sha256sum --check --status; then
    echo "error: $TARBALL does not have the pinned SHA-256 $SHA256; delete it and run again" >&2
    exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tar -xzf "$TARBALL" -C "$tmp" package/es5/tex-mml-chtml.js package/es5/output/chtml/fonts/woff-v2
rm -rf "$OUT"
mkdir -p "$OUT/output/chtml/fonts"
cp "$tmp/package/es5/tex-mml-chtml.js" "$OUT/"
cp -r "$tmp/package/es5/output/chtml/fonts/woff-v2" "$OUT/output/chtml/fonts/"
echo "MathJax $VERSION in $OUT"
