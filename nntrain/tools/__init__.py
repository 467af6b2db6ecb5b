"""One module per command other than `train`: eval report, gradcheck, timing, compare, predict, previews."""
