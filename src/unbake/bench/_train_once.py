"""One timed training run in a fresh process, for ``unbake bench threads`` and its test.

``python -m unbake.bench._train_once DATASET EPOCHS [LIMIT]`` loads the data, trains the
MLP with seed 0, and prints one JSON line: the training's wall seconds (data loading
and imports excluded), the threads torch used and the wait policy in force. A fresh
process is needed because OpenMP reads its wait policy once, when torch loads.
"""

from __future__ import annotations

import json
import sys
import time


def main(argv: list[str]) -> None:
    import unbake  # first: it sets the thread policy before torch loads
    from unbake._threads import thread_policy

    dataset, epochs = argv[0], int(argv[1])
    options = {"limit": int(argv[2])} if len(argv) > 2 else {}
    ds = unbake.load_dataset(dataset, **options)
    config = unbake.TrainConfig.parse(epochs=epochs)
    start = time.perf_counter()
    unbake.fit(ds.train, n_classes=ds.n_classes, model="mlp", config=config, seed=0)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "n_train": len(ds.train), **thread_policy()}))


if __name__ == "__main__":
    main(sys.argv[1:])
