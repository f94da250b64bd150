"""`tune data augment`: the rows a run's data.augment would add, written for a person to read (and edit)
before training. The same generator, cache and filters as `tune run`, so a run afterwards reuses them."""

from __future__ import annotations

import json
from pathlib import Path

from tune.errors import TuneError


def augment_file(recipe, recipe_dir: Path, out: Path, echo) -> str:
    """Write augment.jsonl rows to `out` (atomically); returns the data line a run would print."""
    import transformers

    from tune.data.augment import make_augment
    from tune.data.prepare import prepare
    from tune.data.templates import resolve_template
    from tune.infer.answer_cache import augment_generator, generator_source
    from tune.models.load import load_model, load_tokenizer
    from tune.models.resolve import model_source
    from tune.output import write_text

    if recipe.data.augment is None:
        raise TuneError("data.augment: the recipe has no augment section; add `augment: {}` under data (defaults: "
                        "4 rewordings and 2 statements per row)")
    if recipe.data.augment.rows:
        raise TuneError(f"data.augment.rows: the recipe trains the reviewed rows of {recipe.data.augment.rows} as they "
                        "stand; to generate new ones add --set data.augment.rows=null")
    source = model_source(recipe.model, echo)
    tokenizer = load_tokenizer(recipe.model, source)
    template, _ = resolve_template(recipe.data.template, tokenizer, recipe_dir)
    tokenizer.chat_template = template
    data = prepare(recipe.data, tokenizer, template, recipe_dir, recipe.train.seed)
    generator = generator_source(recipe, echo)
    transformers.set_seed(recipe.train.seed)
    model = load_model(recipe.model, source)
    generator_calls = augment_generator(model, tokenizer, recipe, source, template, echo, generator)
    augmented = make_augment(generator_calls, tokenizer, template, recipe.data, data.train_rows, recipe.train.seed,
                             data.report)
    write_text(out, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in augmented.rows))
    return augmented.note
