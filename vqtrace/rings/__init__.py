"""Ring readers: split (virtio 1.4, 2.7) and packed (2.8) virtqueues read from GuestMemory.

Chain walking, RingState snapshots, what happened between two states, and anomalies."""
