"""Evaluation data from outside the project (COCO captions, VQA files): loaders that read the
files their publishers distribute, validate them, and say which file and key is wrong."""
