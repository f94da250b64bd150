"""The model card: Hub metadata from the recipe, the run's metrics and the verification numbers."""

import json

import yaml

from tune.export.card import write_card
from tune.models.run_dir import AdapterRun


def test_card_metadata_names_the_hub_base_and_datasets(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"steps": 50, "first_loss": 2.5, "last_loss": 1.25}))
    recipe = {"model": {"name": "meta-llama/Llama-3.2-1B", "quantization": "nf4"},
              "data": {"train": ["yahma/alpaca-cleaned", "local.jsonl"]}, "train": {"method": "sft"}}
    run = AdapterRun(tmp_path, {"use_dora": False}, recipe, "meta-llama/Llama-3.2-1B", None, False)
    report = {"verification": [{"what": "merged", "max_abs_logit_diff": 2.5e-7, "tolerance": 1e-4,
                                "adapter_effect": 0.5, "max_abs_logit_diff_vs_base": 0.5, "ok": True}]}
    write_card(tmp_path, run, "merged", report, tmp_path / "merged")
    card = (tmp_path / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta == {"base_model": "meta-llama/Llama-3.2-1B", "library_name": "transformers",
                    "pipeline_tag": "text-generation", "tags": ["tune", "lora", "sft", "merged", "qlora"],
                    "datasets": ["yahma/alpaca-cleaned"]}
    assert "| last_loss | 1.25 |" in card
    assert "- merged: max |logit difference| against base+adapter 2.50e-07, against the base 5.00e-01 (tolerance " \
        "1.0e-04; the adapter moves logits by up to 5.00e-01)\n" in card
