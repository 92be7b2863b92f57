"""The data layer: index and read the LGG kaggle_3m layout, synthetic phantoms, splits, preprocessing.

Modules (import the one you need; this package imports nothing heavy on its own):

- `lgg`: index a dataset folder into `SliceRecord`s, read and validate TIFs, join `data.csv`.
- `phantom`: seeded synthetic MRI-like phantoms in the same layout (the default dataset).
- `splits`: patient-level hold-out, k-fold and leave-one-institution-out splits (`splits.json`).
- `preprocess`: resizing and intensity normalisation shared by training and prediction.
- `transforms`: paired, seeded augmentation of uint8 slices and masks.
- `dataset`: the in-memory uint8 cache and the torch `SliceDataset`.
"""

from __future__ import annotations
