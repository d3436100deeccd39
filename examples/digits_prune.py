"""Prune, factorize and distill the digits CNN, and compare accuracy, parameters and MACs.

    python examples/digits_prune.py [--details]

Needs torch and scikit-learn (the digits ship with scikit-learn; nothing is downloaded). Each method
starts from the same trained CNN and gets a short recovery: fine-tuning with the masks kept, or
distillation from the unpruned model. Parameters count nonzero values and MACs count multiplies by a
nonzero weight, for one 8x8 image.
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch.utils.data import DataLoader, TensorDataset

from edgecompress.compress import digits as d
from edgecompress.compress.distill import distill
from edgecompress.compress.lowrank import factorize
from edgecompress.compress.prune import make_permanent, measure, prune_filters, prune_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--details", action="store_true", help="print the per-layer report of every method")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: reproducible sums)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    data = d.load()
    example = data.x_test[:1]
    teacher = d.fit(d.DigitsCNN(), data)
    loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    dense = measure(teacher, example)
    rows = [("dense CNN", d.accuracy(teacher, data.x_test, data.y_test), None,
             sum(s.params for s in dense.values()), sum(s.macs for s in dense.values()))]

    def run(name, compress, recover):
        model = copy.deepcopy(teacher)
        report = compress(model)
        before_recovery = d.accuracy(model, data.x_test, data.y_test)
        recover(model)
        final = measure(model, example)
        rows.append((name, d.accuracy(model, data.x_test, data.y_test), before_recovery,
                     sum(s.params for s in final.values()), sum(s.macs for s in final.values())))
        if args.details:
            print(report, end="\n\n")

    def fine_tune(model):
        d.fit(model, data, epochs=5, lr=1e-3)
        make_permanent(model)

    def distill_from_teacher(model):
        distill(model, teacher, loader, epochs=3, progress=False)

    run("magnitude 50% + fine-tune", lambda m: prune_weights(m, example, 0.5), fine_tune)
    # 2:4 needs K (inputs per row) divisible by 4: conv1 reads 1 channel x 3x3 = 9 values
    run("2:4 (conv2, fc1, fc2) + fine-tune", lambda m: prune_weights(m, example, pattern="2:4",
                                                                     layers=["conv2", "fc1", "fc2"]), fine_tune)
    run("50% filters + distill", lambda m: prune_filters(m, example, 0.5), distill_from_teacher)
    run("low-rank conv2, fc1 (activation-aware) + distill",
        lambda m: factorize(m, example, layers=["conv2", "fc1"], param_ratio=0.25, activation_aware=True,
                            data=data.x_train[:512]), distill_from_teacher)

    base_params, base_macs = rows[0][3], rows[0][4]
    header = f"{'method':<50}{'accuracy':>9}{'(before recovery)':>19}{'params':>10}{'MACs':>11}{'MACs x':>8}"
    print(header)
    print("-" * len(header))
    for name, acc, raw, params, macs in rows:
        raw_text = "" if raw is None else f"{raw:.2f}"
        print(f"{name:<50}{acc:>8.2f}%{raw_text:>19}{params:>10,}{macs:>11,}{macs / base_macs:>8.3f}")
    print(f"\n(params relative to dense: {', '.join(f'{r[3] / base_params:.3f}' for r in rows[1:])})")


if __name__ == "__main__":
    main()
