"""Names of the original utag package stay importable."""
import utag


def test_original_module_paths():
    from utag.segmentation import evaluate_performance
    from utag.segmentation import utag as pipeline
    from utag.utils import (
        celltype_connectivity,
        domain_connectivity,
        evaluate_clustering,
        measure_per_domain_cell_type_colocalization,
        slide_connectivity,
    )
    from utag.vizualize import (
        add_spatial_image,
        adj2chord,
        draw_network,
        rgbfy_multiplexed_image,
    )

    assert pipeline is utag.utag and evaluate_performance is utag.evaluate_performance
    assert domain_connectivity is utag.analysis.domain_connectivity
    assert celltype_connectivity and slide_connectivity and evaluate_clustering
    assert measure_per_domain_cell_type_colocalization is utag.analysis.measure_per_domain_cell_type_colocalization
    assert adj2chord is utag.plotting.plot_chord and draw_network is utag.plotting.plot_domain_network
    assert rgbfy_multiplexed_image is utag.image.rgb_image and add_spatial_image is utag.image.add_spatial_image


def test_unknown_attribute_is_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError):
        utag.does_not_exist
