"""End-to-end tests against real QEMU and a Linux guest (issue 8)."""
