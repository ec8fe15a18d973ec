"""Notebook 05, exercises 1-2: when does a claim "hold here", and what the ratio to the teacher says.

1. A claim holds when the G2SD student's mean beats the other's by more than their seed spreads
   combined (sqrt(std_a^2 + std_b^2)). One point ahead with seeds 2 points apart: "not resolved";
   one point ahead with seeds 0.2 points apart: "yes"; a single seed: no spread, the verdict says so.
2. The ratio to the teacher: 80 % top-1 under an 85 % teacher is 94.1 % of it; the paper's 98.1 %
   (COCO) / 99.3 % (ADE20K) are ratios too, so they compare across scales where the absolute
   numbers do not.
"""

from g2sd_lib.pipeline import report, results


def summary(values):
    mean, std = results.mean_std(values)
    return {"top1_mean": mean, "top1_std": std, "seeds": values}


def main():
    verdicts = {}
    for name, a, b in (("wide spread", [0.80, 0.82], [0.79, 0.81]),
                       ("narrow spread", [0.810, 0.812], [0.800, 0.802]),
                       ("one seed", [0.81], [0.80])):
        row = report.comparison_claim_row("G2SD beats the other", summary(a), summary(b), "top1")
        verdicts[name] = row["holds at this budget"]
        print(f"1. {name}: {row['ours']} -> {row['holds at this budget']}")
    assert verdicts["narrow spread"] == "yes" and verdicts["one seed"].startswith("yes (one seed")
    assert verdicts["wide spread"].startswith("not resolved")

    ratio = 0.80 / 0.85
    print(f"2. 80 % under an 85 % teacher: {100 * ratio:.1f} % of the teacher")
    assert round(100 * ratio, 1) == 94.1
    print("stage 05 solutions: OK")


if __name__ == "__main__":
    main()
