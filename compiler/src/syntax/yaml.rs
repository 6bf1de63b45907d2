//! YAML twin of the `.qspec` language (placeholder, being written).
