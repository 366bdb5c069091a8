import numpy as np

from vlv_pipeline.metrics.plots import captioned_grid, image_grid, loss_curves


def test_image_grid_lays_items_side_by_side():
    images = np.zeros((5, 8, 8, 3), dtype=np.uint8)
    fig = image_grid({"original": images, "recon": images}, captions=["a"] * 5, items_per_row=3)
    assert len(fig.axes) == 2 * 6  # 2 rows of 3 items x 2 panels
    visible = [ax for ax in fig.axes if ax.axison]
    assert len(visible) == 10 and visible[0].get_xlabel() == "original"


def test_captioned_grid_and_loss_curves():
    fig = captioned_grid(np.zeros((4, 8, 8, 3), dtype=np.uint8), ["x"] * 4, ncols=3)
    assert [ax.get_title() for ax in fig.axes[:4]] == ["x"] * 4
    curves = loss_curves({"a": [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}], "empty": []})
    assert len(curves.axes) == 1 and curves.axes[0].get_title() == "a"
