"""Names of the original utag package stay importable from their original modules."""
import utag


def test_original_module_paths():
    from utag.segmentation import evaluate_performance
    from utag.segmentation import utag as pipeline
    from utag.utils import (
        celltype_connectivity,
        domain_connectivity,
        evaluate_clustering,
        filter_kwargs,
        measure_per_domain_cell_type_colocalization,
        slide_connectivity,
        to_float,
        to_uint,
        z_score,
    )
    from utag.vizualize import (
        add_scale_box_to_fig,
        add_spatial_image,
        adj2chord,
        draw_network,
        plot_domains,
        rgbfy_multiplexed_image,
    )

    assert pipeline is utag.utag
    # notebooks import the original-signature evaluate_performance from utag.segmentation;
    # the package's top level keeps the modern one
    assert evaluate_performance is utag.utils.evaluate_performance
    assert utag.evaluate_performance is utag.evaluation.evaluate_performance
    # the original signatures are thin layers of their own over utag.analysis and
    # utag.plotting (checked against brute force in test_original_api.py)
    for function in (domain_connectivity, celltype_connectivity, slide_connectivity, evaluate_clustering,
                     measure_per_domain_cell_type_colocalization, z_score, to_uint, to_float, filter_kwargs):
        assert function.__module__ == "utag.utils"
    for function in (add_spatial_image, rgbfy_multiplexed_image, add_scale_box_to_fig, draw_network, adj2chord):
        assert function.__module__ == "utag.vizualize"
    assert plot_domains is utag.plotting.plot_domains
    assert set(utag.utils.__all__) <= set(dir(utag.utils)) and set(utag.vizualize.__all__) <= set(dir(utag.vizualize))


def test_unknown_attribute_is_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError):
        utag.does_not_exist
