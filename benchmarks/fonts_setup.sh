#!/usr/bin/env bash
# Installs the fonts of the typefaces benchmark (configs/fonts_lit.yaml, fonts_conditional.yaml)
# from Debian/Ubuntu packages, then says what fontconfig lists and what FontsDataModule keeps.
# Measured on Debian 12: 23 packages, about 75 MB installed, 245 font files; the configs' 35
# families are 140 of them (regular, bold, italic and bold italic each).
#   benchmarks/fonts_setup.sh            # as root, or through sudo
set -euo pipefail
PACKAGES=(
  fonts-anonymous-pro fonts-b612 fonts-cabin fonts-clear-sans fonts-comic-neue
  fonts-crosextra-caladea fonts-crosextra-carlito fonts-dejavu-core fonts-dejavu-extra fonts-go
  fonts-karla fonts-liberation fonts-linuxlibertine fonts-lobstertwo fonts-mononoki
  fonts-open-sans fonts-paratype fonts-roboto-unhinted fonts-sil-andika fonts-sil-charis
  fonts-texgyre fonts-tuffy fonts-vollkorn
)
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
  fontconfig "${PACKAGES[@]}"
echo "fc-list: $(fc-list --format '%{file}\n' | sort -u | wc -l) font files installed"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python - <<'PY'
import yaml

from contrastive.datamodules.font_catalog import read_catalog

config = yaml.safe_load(open("configs/fonts_lit.yaml"))
print(read_catalog(families=config["data"]["init_args"]["families"]).summary())
PY
