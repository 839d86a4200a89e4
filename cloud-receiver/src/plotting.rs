//! Fonts for plots (cipher reports, evaluation reports): plotters draws text
//! only with a registered font, and medgate ships none, so one is looked up
//! on the system. Used by `evaluate --plot` and the simulator's cipher
//! report.

use std::path::PathBuf;
use std::sync::OnceLock;

use plotters::style::FontStyle;

/// Where plot labels come from, after `MEDGATE_FONT`.
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
];

/// Registers a font as plotters' `sans-serif`, once per process. Returns
/// false when none is found (`MEDGATE_FONT`, then common system paths); the
/// caller then draws without text.
pub fn register_font() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| {
        let from_env = std::env::var_os("MEDGATE_FONT").map(PathBuf::from);
        let candidates = from_env
            .into_iter()
            .chain(FONT_CANDIDATES.iter().map(PathBuf::from));
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                // plotters keeps fonts for the life of the program.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}
