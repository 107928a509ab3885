#!/usr/bin/env bash
# Debian packages the project needs. Idempotent and quiet: installs only what is missing.
#
# The built-in corpus (recipes/README.md) needs text-to-speech engines and text packages,
# some of them in Debian's contrib and non-free sections, which a stock install leaves off:
# when one of those is missing, a deb822 source for contrib/non-free is added first.
set -euo pipefail

# irstlm: word n-gram LMs for `u2moe lm`; chromium: the web page's test (test_serve_browser.py)
base=(sox libsndfile1 irstlm chromium chromium-driver)
# Engines and voices of the corpus recipe (u2moe/corpus/voices.py), and its text sources.
corpus_main=(
  espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k
  fortunes fortunes-min wordnet-base wamerican
)
corpus_contrib_non_free=(
  mbrola mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1
  mbrola-de1 mbrola-de2 mbrola-de3 mbrola-de4 mbrola-de5 mbrola-fr1 mbrola-fr4 mbrola-nl2
  mbrola-sw1 mbrola-sw2 mbrola-af1 mbrola-pl1 mbrola-hu1 mbrola-gr2 mbrola-ro1
  festvox-rablpc16k festvox-don festvox-us1 festvox-us2 festvox-us3 festvox-en1
  libttspico-utils rhvoice rhvoice-english
)

missing() {
  local p
  for p in "$@"; do
    [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || echo "$p"
  done
}

mapfile -t need < <(missing "${base[@]}" "${corpus_main[@]}" "${corpus_contrib_non_free[@]}")
[ ${#need[@]} -eq 0 ] && exit 0

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

mapfile -t need_extra < <(missing "${corpus_contrib_non_free[@]}")
sources=/etc/apt/sources.list.d/u2moe-contrib-non-free.sources
if [ ${#need_extra[@]} -gt 0 ] && [ ! -e "$sources" ]; then
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
  echo "adding Debian contrib and non-free ($codename) as $sources"
  $SUDO tee "$sources" >/dev/null <<EOF
Types: deb
URIs: http://deb.debian.org/debian
Suites: $codename $codename-updates
Components: contrib non-free
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
fi

echo "installing Debian packages: ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
  "${need[@]}" >/dev/null
