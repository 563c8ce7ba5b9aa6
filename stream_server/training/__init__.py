"""Training and evaluation: datasets, augmentation, the recipes and their loops, the teacher,
and the evaluations on clips and on mixes."""
