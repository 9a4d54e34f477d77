#!/usr/bin/env bash
# The README's demo: local Ray, the bundled sample ECGs, tables under ./out/, then a DuckDB query.
# The published weights are fetched on first use (~1.5 GB). If they cannot be fetched (offline),
# the demo says so and runs in STAND-IN mode: random weights, every row labelled "stand-in".
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
out="${ECGEMBED_DEMO_OUT:-./out}"
samples="$(python -c "from importlib import resources; print(resources.files('ecgembed') / 'samples')")"
export HF_HUB_ETAG_TIMEOUT="${HF_HUB_ETAG_TIMEOUT:-10}"

set +e
ecgembed run --input "$samples" --output "$out" --labels cpsc2018 --progress-interval 5
rc=$?
set -e
if [ "$rc" -eq 3 ]; then
  cat >&2 <<'MSG'

ecgembed demo: the published MELP / ECGFM-KED weights could not be fetched (see the error above).
  To use real weights on this machine, download them elsewhere and point at the copies:
    ecgembed run --melp-weights /path/to/MELP_Encoder/ --ecgfm-ked-weights /path/to/best_valid_all_increase_with_augment_epoch_3.pt \
                 --ecgfm-ked-text-model /path/to/Bio_ClinicalBERT/ --input ecgembed/samples --output ./out
  Running the demo now in STAND-IN mode: random weights, for trying the pipeline only.
  Every row it writes has a model_version starting with "stand-in:".

MSG
  ecgembed run --input "$samples" --output "$out" --labels cpsc2018 --progress-interval 5 --stand-in
elif [ "$rc" -ne 0 ]; then
  exit "$rc"
fi

python - "$out" <<'PY'
import sys

from ecgembed.tables.views import connect

out = sys.argv[1]
con = connect(out)   # DuckDB with views of the current rows (same as: ecgembed sql OUT "...")
sql = """
SELECT s.record_id,
       m.model_version[:24]            AS melp_model_version,
       arg_max(s.class_name, s.score)  AS top_cpsc2018_class,
       round(max(s.score), 3)          AS score,
       m.amplitude_suspect
FROM scores_current s JOIN melp_current m USING (record_id)
WHERE s.label_set = 'cpsc2018'
GROUP BY ALL ORDER BY s.record_id
"""
print(f"\nDuckDB over {out} (try: ecgembed sql {out} \"SELECT ...\"):{sql}")
con.sql(sql).show()
print("errors:")
con.sql("SELECT record_id, error_type, message FROM errors_current").show(max_width=160)
PY
