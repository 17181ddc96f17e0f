#!/usr/bin/env bash
# What the browser tests of the web maps (tests/test_webmap.py) need, installed once:
#   - Chromium and its WebDriver from Debian's packages (apt, as root);
#   - Leaflet and folium's other JavaScript/CSS companions from their npm packages, into
#     .webdeps/ (git-ignored) or the folder GEODET_WEBDEPS names; the tests point folium there.
# Idempotent: what is already there is not installed again. Used by .ci/run and for local runs.
set -euo pipefail
cd "$(dirname "$0")/.."

# The versions folium's page template names (folium.Map.default_js / default_css).
NPM_PACKAGES=(leaflet@1.9.3 jquery@3.7.1 bootstrap@5.2.2 leaflet.awesome-markers@2.0.5
              @fortawesome/fontawesome-free@6.2.0)
WEBDEPS=${GEODET_WEBDEPS:-.webdeps}

APT_PACKAGES=(chromium chromium-driver fonts-liberation)  # the font: readable screenshots without recommends
if ! dpkg -s "${APT_PACKAGES[@]}" >/dev/null 2>&1; then
    SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${APT_PACKAGES[@]}"
fi

missing=0
for spec in "${NPM_PACKAGES[@]}"; do
    name=${spec%@*} version=${spec##*@}
    grep -qs "\"version\": \"$version\"" "$WEBDEPS/node_modules/$name/package.json" || missing=1
done
if [ "$missing" = 1 ]; then
    mkdir -p "$WEBDEPS"
    [ -f "$WEBDEPS/package.json" ] || echo '{"private": true}' > "$WEBDEPS/package.json"
    npm install --prefix "$WEBDEPS" --no-audit --no-fund --silent "${NPM_PACKAGES[@]}"
fi
echo "browser test dependencies: $(chromium --version 2>/dev/null | head -1), chromedriver $(chromedriver --version | cut -d' ' -f2), npm packages in $WEBDEPS"
