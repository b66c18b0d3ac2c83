"""RGB composites of multiplexed images and attaching them for scanpy/squidpy plots."""
import numpy as np
import pytest

from utag.image import add_spatial_image, rgb_image


@pytest.fixture
def stack():
    rng = np.random.default_rng(0)
    image = rng.gamma(1.0, size=(4, 40, 60)).astype(np.float32)
    image[2, :, :30] += 50  # channel 2 bright on the left half
    return image


def test_rgb_from_a_tiff_file(stack, tmp_path):
    import tifffile

    path = tmp_path / "roi.tiff"
    tifffile.imwrite(path, stack, photometric="minisblack")  # channels as pages, as IMC/CODEX stacks
    rgb = rgb_image(path, channels=["CD3", None, "CD20"], channel_names=["DNA", "CD45", "CD3", "CD20"])
    assert rgb.shape == (40, 60, 3) and rgb.dtype == np.float32
    assert rgb[..., 1].max() == 0
    assert rgb[:, :30, 0].mean() > 0.9 and rgb[:, 30:, 0].mean() < 0.1
    np.testing.assert_allclose(rgb[..., 2], rgb_image(stack, channels=[3])[..., 0])


def test_contrast_gamma_and_log(stack):
    plain = rgb_image(stack, channels=[0], percentiles=(0, 100))[..., 0]
    np.testing.assert_allclose(plain, (stack[0] - stack[0].min()) / np.ptp(stack[0]), rtol=1e-5, atol=1e-6)
    stretched = rgb_image(stack, channels=[0], percentiles=(5, 95))[..., 0]
    assert (stretched == 1).mean() == pytest.approx(0.05, abs=0.01)
    brighter = rgb_image(stack, channels=[0], gamma=2.0)[..., 0]
    assert brighter.mean() > rgb_image(stack, channels=[0])[..., 0].mean()
    logged = rgb_image(stack, channels=[0], log_transform=True, percentiles=(0, 100))[..., 0]
    np.testing.assert_allclose(logged, (np.log1p(stack[0]) - np.log1p(stack[0]).min()) / np.ptp(np.log1p(stack[0])),
                               rtol=1e-4, atol=1e-5)
    channels_last = rgb_image(np.moveaxis(stack, 0, -1), channels=[0], channel_axis=-1)
    np.testing.assert_allclose(channels_last, rgb_image(stack, channels=[0]))


@pytest.mark.parametrize("kwargs, message", [
    ({"channels": [9]}, "out of range"),
    ({"channels": ["CD3"]}, "channel_names"),
    ({"channels": [0, 1, 2, 3]}, "1 to 3"),
    ({"channels": [0], "percentiles": (90, 10)}, "percentiles"),
    ({"channels": [0], "gamma": 0}, "gamma"),
])
def test_bad_arguments(stack, kwargs, message):
    with pytest.raises(ValueError, match=message):
        rgb_image(stack, **kwargs)


# scanpy 1.11 deprecates sc.pl.spatial in favour of squidpy.pl.spatial_scatter (both read the
# layout add_spatial_image writes), and calls matplotlib's Colormap.set_bad, which matplotlib
# will deprecate: third-party warnings about scanpy's own code
@pytest.mark.filterwarnings("ignore:Use `squidpy.pl.spatial_scatter` instead:FutureWarning")
@pytest.mark.filterwarnings("ignore:The function spatial is deprecated:FutureWarning")  # scanpy 1.12's wording
@pytest.mark.filterwarnings("ignore:The set_bad function will be deprecated:PendingDeprecationWarning")
def test_scanpy_draws_domains_over_the_attached_image(stack):
    import scanpy as sc

    from utag.datasets import synthetic_tissue

    adata = synthetic_tissue(n_cells=300, n_slides=1, random_state=0)
    adata.obsm["spatial"] = adata.obsm["spatial"] / adata.obsm["spatial"].max() * 59
    add_spatial_image(adata, rgb_image(stack, channels=[2, 0, 3]), library_id="roi_0")
    axes = sc.pl.spatial(adata, color="domain", library_id="roi_0", img_key="hires", spot_size=2, show=False)
    assert len(axes[0].images) == 1 and axes[0].images[0].get_array().shape == (40, 60, 3)
    assert len(axes[0].collections) >= 1


def test_one_channel_by_name_names_as_an_index_and_a_nan_pixel(stack):
    import pandas as pd

    names = pd.Index(["DNA", "CD45", "CD3", "CD20"])  # e.g. adata.var_names
    np.testing.assert_allclose(rgb_image(stack, "CD3", channel_names=names), rgb_image(stack, [2]))
    holed = stack.copy()
    holed[2, 0, 0] = np.nan
    red = rgb_image(holed, [2])[..., 0]
    assert red[0, 0] == 0 and red.max() == 1  # one NaN pixel blanked the whole channel
    np.testing.assert_allclose(red[1:], rgb_image(stack, [2])[..., 0][1:], atol=0.02)


def test_an_image_added_to_one_slide_of_a_result_stays_with_that_slide():
    import anndata
    from anndata import ImplicitModificationWarning

    # a view of one slide (as plotted): setdefault on anndata's DictView lost the image,
    # or wrote it into the parent's uns['spatial']
    for parent_images in ({}, {"spatial": {"r1": {"images": {}, "scalefactors": {}}}}):
        parent = anndata.AnnData(np.zeros((4, 1)), obs={"roi": ["r0", "r0", "r1", "r1"]},
                                 obsm={"spatial": np.ones((4, 2))}, uns=dict(parent_images))
        roi = parent[parent.obs["roi"] == "r0"]
        with pytest.warns(ImplicitModificationWarning):  # the view becomes its own AnnData
            add_spatial_image(roi, np.zeros((10, 10, 3)), "r0")
        assert "r0" in roi.uns["spatial"] and roi.uns["spatial"]["r0"]["images"]["hires"].shape == (10, 10, 3)
        assert "r0" not in parent.uns.get("spatial", {})
        assert list(roi.uns["spatial"]) == list(parent_images.get("spatial", {})) + ["r0"]
