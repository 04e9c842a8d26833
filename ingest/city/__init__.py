"""The simulated city: Guangzhou's geography, its devices, its 12345 callers and scenarios."""
