"""medgemma-node: a DICOM node that runs MedGemma beside a PACS. Not a medical device."""
