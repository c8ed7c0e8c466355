"""`comptune eval` (held-out cross-entropy per dataset) and `comptune rollout` (continuations)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .._device import add_device_argument
from ..errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="held-out cross-entropy (nats/token, first token of each block excluded) per dataset",
        description="Mean cross-entropy in nats per predicted token of a causal LM on each dataset, with the "
        "chance line ln|V| and the number of tokens evaluated. Datasets are bundled names (eval.de, "
        "parallel.fr, general_en, code, ...) or sources understood by load_texts: .txt, .jsonl(.gz), a "
        "`datasets` save_to_disk directory, or a Hub dataset id owner/name (online only); append @LANG to pick a "
        "language, e.g. ./europarl@de with --text-column translation.",
    )
    p.add_argument("--model", help="model directory (save_pretrained, safetensors, tokenizer inside); default: the bundled model")
    p.add_argument("--data", nargs="+", metavar="NAME_OR_PATH[@LANG]", help="datasets; default: the bundled held-out sets")
    p.add_argument("--block-len", type=int, help="tokens per evaluation block; default: the model's context, at most 256")
    p.add_argument("--max-blocks", type=int, default=256,
                   help="blocks per dataset, spread evenly over it (default 256); 0 = all")
    p.add_argument("--batch-size", type=int, default=16)
    add_device_argument(p)
    p.add_argument("--text-column", default="text", help="text column of row data; dotted for nested dicts (translation.de)")
    p.add_argument("--lang-column", default="lang", help="language column used to filter rows by language")
    p.add_argument("--lang", help="language for sources given without @LANG")
    p.add_argument("--split", help="split of a DatasetDict / Hub dataset")
    p.add_argument("--subset", help="configuration name of a Hub dataset (e.g. de-en)")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the result (with config and versions) as JSON")
    p.set_defaults(func=_eval)

    r = sub.add_parser(
        "rollout",
        help="continue prompts with one model, or several side by side",
        description="Greedy (default) or seeded sampled continuations of each prompt; with --compare, one "
        "column per model in a markdown table. The compared models must share the first model's tokenizer.",
    )
    r.add_argument("--model", help="model directory; default: the bundled model")
    r.add_argument("--compare", nargs="+", default=[], metavar="DIR", help="further model directories to compare")
    r.add_argument("--prompt", nargs="+", required=True, metavar="TEXT", help="prompts to continue")
    r.add_argument("--max-new-tokens", type=int, default=40)
    r.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    r.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (with --sample)")
    r.add_argument("--top-k", type=int, help="sample only from the k most likely tokens (with --sample)")
    r.add_argument("--seed", type=int, default=0, help="sampling seed (with --sample)")
    r.add_argument("--json", type=Path, metavar="OUT", help="also write the rollouts (with config and versions) as JSON")
    add_device_argument(r)
    r.set_defaults(func=_rollout)

    a = sub.add_parser(
        "attack",
        help="how robust is an edit? relearning, int8/4-bit quantisation and dose, against the base model",
        description="Attack a saved edit (OUT/edit of `comptune tune`, or a sweep's edits/ID): fine-tune the merged "
        "edited model on N target-language tokens it never saw (all weights with Adam, and a rank-8 LoRA attacker; "
        "the same from the base model as the reference), quantise it (int8, simulated 4-bit), and interpolate it "
        "toward the base model (dose t). Writes OUT/attack.json (config, seed, versions) and OUT/attack.png/.svg.",
    )
    a.add_argument("edit", type=Path, help="edit folder (adapter_config.json inside)")
    a.add_argument("--model", type=Path, help="the model the edit was trained on (default: the bundled model)")
    a.add_argument("--decomposition", type=Path, help="decomposition folder, needed for a CI-gated edit (default: the bundled one)")
    a.add_argument("--config", type=Path, help="YAML of AttackConfig fields; the flags below override it")
    a.add_argument("--tokens", type=int, nargs="+", help="attacker token counts N (default 16 128 1024)")
    a.add_argument("--attackers", nargs="+", choices=["full", "lora"])
    a.add_argument("--lrs", type=float, nargs="+", help="attacker Adam learning rates; each attacker keeps its best")
    a.add_argument("--max-steps", type=int, dest="max_steps")
    a.add_argument("--eval-every", type=int, dest="eval_every")
    a.add_argument("--attack-data", dest="attack_data", help="attacker text (default valid.de: never trained on nor evaluated)")
    a.add_argument("--target", help="held-out set the edit removes (default parallel.de)")
    a.add_argument("--reference", help="held-out set it should keep (default general_en)")
    a.add_argument("--seed", type=int)
    a.add_argument("--out", type=Path, required=True, help="output folder (not inside the edit's folder)")
    add_device_argument(a)
    a.set_defaults(func=_attack)


def _eval(args) -> int:
    from .._device import resolve_device
    from .run import EvalConfig, run_eval

    cfg = EvalConfig(
        model=args.model, data=args.data, block_len=args.block_len, max_blocks=args.max_blocks or None,
        batch_size=args.batch_size, device=str(resolve_device(args.device)), text_column=args.text_column, lang_column=args.lang_column,
        lang=args.lang, split=args.split, subset=args.subset,
    )
    result = run_eval(cfg, progress=True)
    print(result.table())
    if args.json:
        result.save_json(args.json)
        print(f"wrote {args.json}")
    return 0


def _rollout(args) -> int:
    from .._device import resolve_device
    from .._io import write_json_atomic
    from .rollouts import rollouts_markdown
    from .run import RolloutConfig, run_rollouts

    if not args.sample and (args.top_k is not None or args.temperature != 1.0):
        raise UserError("--temperature and --top-k apply to sampling; add --sample")
    cfg = RolloutConfig(
        model=args.model, compare=args.compare, prompts=args.prompt, max_new_tokens=args.max_new_tokens,
        greedy=not args.sample, temperature=args.temperature, top_k=args.top_k, seed=args.seed,
        device=str(resolve_device(args.device)),
    )
    report = run_rollouts(cfg)
    print(rollouts_markdown(report["rollouts"]))
    if args.json:
        write_json_atomic(args.json, report)
        print(f"wrote {args.json}")
    return 0


_ATTACK_OVERRIDES = ("tokens", "attackers", "lrs", "max_steps", "eval_every", "attack_data", "target", "reference", "seed")


def _attack(args) -> int:
    from .._device import resolve_device
    from .robustness import AttackConfig, attack_single_edit, summary_table

    device = resolve_device(args.device)  # before anything is read or loaded
    fields = AttackConfig.from_file(args.config).model_dump() if args.config else {}
    fields.update({k: getattr(args, k) for k in _ATTACK_OVERRIDES if getattr(args, k) is not None})
    config = AttackConfig.model_validate(fields)
    result, path = attack_single_edit(args.edit, config, args.out, model_dir=args.model, decomposition_dir=args.decomposition,
                                      device=device,
                                      progress=lambda msg: print(f"attack: {msg}", flush=True))
    print(summary_table(result, config))
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0
