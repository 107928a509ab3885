#!/usr/bin/env bash
# Debian packages the project needs. Idempotent and quiet: installs only what is missing.
#
# The built-in corpus (recipes/README.md) needs text-to-speech engines and text packages,
# some of them in Debian's contrib and non-free sections, which a stock install leaves off:
# when one of those is missing, contrib and non-free are added for the Debian archives the
# machine's apt sources already use (same mirrors and suites; no host is named here).
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

# deb822 stanzas adding contrib and non-free to every Debian archive (URI and suites) that
# the apt sources use for main, as the downloaded Release files name them.
contrib_non_free_sources() {
  local archives uri suites
  mapfile -t archives < <(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' \
    'Origin: Debian' 'Component: main' 'Created-By: Packages' | sort -u)
  [ ${#archives[@]} -gt 0 ] || return 1
  for uri in $(printf '%s\n' "${archives[@]}" | cut -d' ' -f1 | sort -u); do
    suites=$(printf '%s\n' "${archives[@]}" | awk -v u="$uri" '$1 == u {print $2}' | xargs)
    printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: contrib non-free\n' "$uri" "$suites"
    printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n'
  done
}

if [ "${1:-}" = "--print-sources" ]; then  # show what would be added, change nothing
  contrib_non_free_sources
  exit
fi

mapfile -t need < <(missing "${base[@]}" "${corpus_main[@]}" "${corpus_contrib_non_free[@]}")
[ ${#need[@]} -eq 0 ] && exit 0

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

mapfile -t need_extra < <(missing "${corpus_contrib_non_free[@]}")
sources=/etc/apt/sources.list.d/u2moe-contrib-non-free.sources
if [ ${#need_extra[@]} -gt 0 ] && [ ! -e "$sources" ]; then
  $SUDO apt-get update -qq  # the Release files tell which configured archives are Debian's
  if ! stanzas=$(contrib_non_free_sources); then
    echo "no Debian archive in the apt sources: add contrib and non-free for ${need_extra[*]}" >&2
    exit 1
  fi
  echo "adding contrib and non-free to the apt sources' Debian archives as $sources"
  $SUDO tee "$sources" >/dev/null <<<"$stanzas"
fi

echo "installing Debian packages: ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
  "${need[@]}" >/dev/null
