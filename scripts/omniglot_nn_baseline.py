"""Nearest-neighbour baseline on raw pixels for N-way K-shot Omniglot episodes.

Each query image gets the label of the closest support image (Euclidean distance on the
28x28 pixels). Episodes come from the held-out alphabets of an alphabet split, drawn with
the same sampler (and test stream) as meta-testing; no rotations.

    python scripts/omniglot_nn_baseline.py --data_dir=../shared/data/omniglot
        [--held_out=Greek,Korean] [--episodes=600] [--queries=15]
"""

from __future__ import annotations

import argparse

import numpy as np

from maml_dist import meta_test
from maml_dist.data import episodes, omniglot, splits
from maml_dist.types import TEST_STREAM


def nn_accuracy(episode) -> float:
    """Fraction of query images whose nearest support image has their label."""
    support = episode.support_x.reshape(len(episode.support_x), -1).astype(np.float32) / 255
    query = episode.query_x.reshape(len(episode.query_x), -1).astype(np.float32) / 255
    distances = ((query[:, None, :] - support[None, :, :]) ** 2).sum(-1)
    predicted = episode.support_y[distances.argmin(1)]
    return float(np.mean(predicted == episode.query_y))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--sets", default="images_background_small1,images_background_small2")
    parser.add_argument("--held_out", default="Greek,Korean")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    data = omniglot.load(
        omniglot.find_sources(args.data_dir, tuple(args.sets.split(","))),
        cache_dir=omniglot.default_cache_dir(),
    )
    split = splits.alphabet_split(data, held_out=tuple(args.held_out.split(",")))
    print(
        f"held-out alphabets {args.held_out}: {len(split.test)} characters; "
        f"{args.episodes} episodes, {args.queries} queries per class, no rotations"
    )
    print("| episode | nearest-neighbour accuracy (mean ± 95% CI) |")
    print("|---|---:|")
    for ways, shots in ((5, 1), (5, 5), (20, 1), (20, 5)):
        sampler = episodes.EpisodeSampler(
            data, split.test, ways, shots, args.queries, rotations=False
        )
        acc = np.array(
            [
                [nn_accuracy(sampler.episode(args.seed, TEST_STREAM, 0, i))]
                for i in range(args.episodes)
            ]
        )
        mean, ci = meta_test.mean_and_ci95(acc)
        print(f"| {ways}-way {shots}-shot | {100 * mean[0]:.1f}% ± {100 * ci[0]:.1f}% |")


if __name__ == "__main__":
    main()
