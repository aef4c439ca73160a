"""Whole-brain radiomics at the site: the paper's preprocessing and the pyradiomics adapter.

Everything in this package is site-local: it produces the raw :class:`FeatureTable` (372 named
columns with the paper's settings) and the FEATDIR folder; nothing here sends anything anywhere.
Releasing values off the site is done by the privacy/transport layers on protected copies.
"""

from securefed.radiomics.adapter import extract_modality, extract_preprocessed, make_extractor
from securefed.radiomics.binning import shared_edges
from securefed.radiomics.extract import (
    Extraction,
    ProgressCallback,
    case_ranges,
    case_vector,
    extract_features,
)
from securefed.radiomics.names import class_feature_names, columns, modality_columns
from securefed.radiomics.preprocess import Preprocessed, foreground_box, preprocess
from securefed.radiomics.storage import load_table, read_manifest, save_table
from securefed.radiomics.table import FeatureTable

__all__ = [
    "Extraction",
    "FeatureTable",
    "Preprocessed",
    "ProgressCallback",
    "case_ranges",
    "case_vector",
    "class_feature_names",
    "columns",
    "extract_features",
    "extract_modality",
    "extract_preprocessed",
    "foreground_box",
    "load_table",
    "make_extractor",
    "modality_columns",
    "preprocess",
    "read_manifest",
    "save_table",
    "shared_edges",
]
