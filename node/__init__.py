"""medgemma-node: a DICOM node that runs MedGemma beside a PACS. Not a medical device."""

__version__ = "0.1.0"
# Written as Manufacturer into every result object; how the node knows its own results.
MANUFACTURER = "medgemma-node"
