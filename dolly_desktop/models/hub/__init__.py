"""Everything that talks to the Hugging Face Hub (or a mirror at HF_ENDPOINT): the one HTTP
client and its one sentence for a Hub out of reach (network), resumable verified downloads
(download), and the current list of the OpenVINO organisation's Dolly repos (catalog)."""
