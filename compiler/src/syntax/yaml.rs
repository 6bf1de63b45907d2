//! YAML twin of the `.qspec` language (placeholder, being written).
// Interim until the YAML twin lands: a clear error, never a silent success.
pub fn parse_yaml(_src: &str) -> Result<crate::ast::Model, crate::diag::Diagnostics> {
    Err(
        crate::diag::Diagnostic::error("E0001", "YAML specs are not supported by this build")
            .into(),
    )
}
pub fn print_yaml(_m: &crate::ast::Model) -> String {
    String::new()
}
