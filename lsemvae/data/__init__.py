"""ECG data: readers to :class:`ECGRecord`, datasets, tasks, preprocessing, cache, synthetic cohort."""

from lsemvae.data.record import ECGRecord

__all__ = ["ECGRecord"]
