"""ffdi: experiment-tracked deepfake face-image detection."""
