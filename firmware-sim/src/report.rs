//! `medgate-sim cipher-report`: the cipher-quality report of one image, as
//! text or JSON, and a picture of histograms and correlation scatter.

use std::path::Path;

use medgate_shared::pixels::{PixelFormat, Pixels};
use medgate_shared::quality::{CipherReport, ReportImages, histogram};
use plotters::prelude::*;

/// The key the report uses unless told otherwise: bytes 0, 1, …, 31.
/// Published on purpose, so anyone can reproduce a report.
pub const DEFAULT_KEY: [u8; 32] = {
    let mut key = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        key[i] = i as u8;
        i += 1;
    }
    key
};

/// The report as a table a person reads, with the ideal values beside it.
pub fn render_text(r: &CipherReport) -> String {
    let corr = |c: &medgate_shared::quality::Correlations| {
        format!("h {:+.5}  v {:+.5}  d {:+.5}", c.h, c.v, c.d)
    };
    let entropy_note = if r.depth == 8 {
        "8 (7.9972 for a random 256x256)"
    } else {
        "16 (less when there are not many more pixels than 65 536 levels)"
    };
    format!(
        "Henon cipher report, {w}x{h} pixels ({depth}-bit grayscale)\n\
         \n\
         metric                       measured     ideal\n\
         NPCR, one pixel changed      {npcr_p:>9.4} %  {npcr_i:.4} %\n\
         UACI, one pixel changed      {uaci_p:>9.4} %  {uaci_i:.4} %\n\
         NPCR, one key bit flipped    {npcr_k:>9.4} %  {npcr_i:.4} %\n\
         UACI, one key bit flipped    {uaci_k:>9.4} %  {uaci_i:.4} %\n\
         entropy, plain               {ep:>9.4} bits\n\
         entropy, cipher              {ec:>9.4} bits  {entropy_note}\n\
         correlation, plain           {cp}\n\
         correlation, cipher          {cc}   (ideal 0)\n\
         PSNR cipher vs plain         {psnr:>9.4} dB\n\
         MSE cipher vs plain          {mse:>9.2}\n\
         MSE decrypted vs plain       {msed:>9.2}  (must be 0)\n\
         decryption exact             {exact}\n",
        w = r.width,
        h = r.height,
        depth = r.depth,
        npcr_i = r.ideal.npcr,
        uaci_i = r.ideal.uaci,
        npcr_p = r.npcr_pixel,
        uaci_p = r.uaci_pixel,
        npcr_k = r.npcr_key,
        uaci_k = r.uaci_key,
        ep = r.entropy_plain,
        ec = r.entropy_cipher,
        cp = corr(&r.corr_plain),
        cc = corr(&r.corr_cipher),
        psnr = r.psnr_cipher_db,
        mse = r.mse_cipher,
        msed = r.mse_decrypted,
        exact = if r.decrypt_exact { "yes" } else { "NO" },
    )
}

/// Draws plain and cipher histograms (top) and horizontal adjacent-pixel
/// scatter (bottom) into a PNG. A 16-bit image is drawn by its top 8 bits.
///
/// # Errors
/// A description if drawing or writing fails.
pub fn plot(images: &ReportImages, report: &CipherReport, out: &Path) -> Result<(), String> {
    let labels = medgate_receiver::plotting::register_font();
    if !labels {
        tracing::warn!(
            "no font found (set MEDGATE_FONT to a .ttf file); drawing the plot without labels"
        );
    }
    let root = BitMapBackend::new(out, (1400, 1000)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let panels = root.split_evenly((2, 2));
    let w = images.plain.width() as usize;
    let (plain, cipher) = (top_bytes(&images.plain), top_bytes(&images.cipher));
    let sets = [
        ("plain", &plain, report.corr_plain.h, RGBColor(40, 90, 160)),
        (
            "cipher",
            &cipher,
            report.corr_cipher.h,
            RGBColor(190, 60, 40),
        ),
    ];
    let value = if report.depth == 8 {
        "pixel value"
    } else {
        "pixel value, top 8 of 16 bits"
    };
    for (i, (name, data, corr, color)) in sets.into_iter().enumerate() {
        let counts = histogram(data);
        let peak = counts.iter().copied().max().unwrap_or(1).max(1);
        let mut chart = ChartBuilder::on(&panels[i]);
        chart.margin(20);
        if labels {
            chart
                .caption(format!("{name} image histogram"), ("sans-serif", 24))
                .x_label_area_size(35)
                .y_label_area_size(60);
        }
        let mut chart = chart
            .build_cartesian_2d(0u32..256u32, 0u64..peak + peak / 20)
            .map_err(|e| e.to_string())?;
        if labels {
            chart
                .configure_mesh()
                .x_desc(value)
                .y_desc("pixels")
                .draw()
                .map_err(|e| e.to_string())?;
        }
        chart
            .draw_series(
                Histogram::vertical(&chart)
                    .style(color.filled())
                    .data(counts.iter().enumerate().map(|(v, &c)| (v as u32, c))),
            )
            .map_err(|e| e.to_string())?;

        let mut chart = ChartBuilder::on(&panels[2 + i]);
        chart.margin(20);
        if labels {
            chart
                .caption(
                    format!("{name}: horizontal neighbours (r = {corr:+.4})"),
                    ("sans-serif", 24),
                )
                .x_label_area_size(35)
                .y_label_area_size(60);
        }
        let mut chart = chart
            .build_cartesian_2d(0u32..256u32, 0u32..256u32)
            .map_err(|e| e.to_string())?;
        if labels {
            chart
                .configure_mesh()
                .x_desc("pixel (x, y)")
                .y_desc("pixel (x+1, y)")
                .draw()
                .map_err(|e| e.to_string())?;
        }
        // A deterministic sample of pairs keeps the picture readable; the r
        // in the caption is computed over every pair.
        let pairs = data.len().saturating_sub(1);
        let stride = (pairs / 6000).max(1);
        let points = (0..pairs)
            .step_by(stride)
            .filter(|&k| (k + 1) % w != 0)
            .map(|k| (u32::from(data[k]), u32::from(data[k + 1])));
        chart
            .draw_series(points.map(|p| Circle::new(p, 1, color.mix(0.5).filled())))
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

/// Each pixel's top 8 bits: the pixels of an 8-bit image, the high bytes
/// of a 16-bit one.
fn top_bytes(image: &Pixels) -> Vec<u8> {
    match image.format() {
        PixelFormat::Gray8 => image.data().to_vec(),
        PixelFormat::Gray16 => image.data().chunks_exact(2).map(|b| b[1]).collect(),
    }
}

#[cfg(test)]
mod tests {
    use medgate_shared::henon::HenonKey;
    use medgate_shared::quality::report;

    use super::*;

    #[test]
    fn default_key_counts_up() {
        assert_eq!(DEFAULT_KEY[0], 0);
        assert_eq!(DEFAULT_KEY[31], 31);
    }

    #[test]
    fn text_and_plot_are_produced() {
        let px = Pixels::new(
            64,
            64,
            PixelFormat::Gray8,
            (0..4096).map(|i| (i / 64) as u8).collect(),
        )
        .unwrap();
        let (r, images) = report(&px, &HenonKey::from_bytes(DEFAULT_KEY)).unwrap();
        let text = render_text(&r);
        assert!(text.contains("NPCR") && text.contains("decryption exact             yes"));
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("plot.png");
        plot(&images, &r, &out).unwrap();
        let drawn = image::open(&out).unwrap();
        assert_eq!((drawn.width(), drawn.height()), (1400, 1000));
    }

    #[test]
    fn a_16_bit_image_is_reported_at_its_depth() {
        let px = Pixels::new(
            64,
            64,
            PixelFormat::Gray16,
            (0..4096u16).flat_map(|i| (i * 8).to_le_bytes()).collect(),
        )
        .unwrap();
        let (r, images) = report(&px, &HenonKey::from_bytes(DEFAULT_KEY)).unwrap();
        let text = render_text(&r);
        assert!(
            text.contains("(16-bit grayscale)") && text.contains("99.9985 %"),
            "{text}"
        );
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("plot.png");
        plot(&images, &r, &out).unwrap();
        assert!(out.exists());
    }
}
