import CoreGraphics
import ImageIO
import UIKit

/// The host's mobilevits.data.prepare_image on device: resize the short side to resize_short_side,
/// centre-crop resolution x resolution, then x = (pixel * scale - mean) / std per RGB channel, laid
/// out as the manifest says (our .pte and .mlpackage inputs are NCHW). Normalisation is baked into our
/// artifacts by default, so mean/std are 0/1 unless the sidecar said normalization_in_model = false.
enum Preprocessor {

    /// `prepared`: the image is already resolution² (the bundled test image); its pixels are used as they are.
    static func input(from image: CGImage, entry: ModelEntry, prepared: Bool) throws -> [Float] {
        let spec = entry.preprocess
        let r = spec.resolution
        var rgba = [UInt8](repeating: 0, count: r * r * 4)
        let exact = prepared && image.width == r && image.height == r
        let scale = Double(spec.resizeShortSide) / Double(min(image.width, image.height))
        let w = exact ? r : max(r, Int((Double(image.width) * scale).rounded()))
        let h = exact ? r : max(r, Int((Double(image.height) * scale).rounded()))
        let left = (w - r) / 2, top = (h - r) / 2
        let colorSpace = CGColorSpace(name: CGColorSpace.sRGB)!
        let drawn: Bool = rgba.withUnsafeMutableBytes { buf -> Bool in
            guard let ctx = CGContext(data: buf.baseAddress, width: r, height: r, bitsPerComponent: 8,
                                      bytesPerRow: 4 * r, space: colorSpace,
                                      bitmapInfo: CGImageAlphaInfo.premultipliedLast.rawValue) else { return false }
            ctx.interpolationQuality = exact ? .none : .high
            // CG's origin is bottom-left: place the image so that rows top..<top+r land in the context.
            ctx.draw(image, in: CGRect(x: -left, y: r + top - h, width: w, height: h))
            return true
        }
        guard drawn else { throw DemoError("cannot create a \(r)x\(r) RGBA context") }

        let plane = r * r
        var out = [Float](repeating: 0, count: 3 * plane)
        let nchw = entry.input.layout == "NCHW"
        for i in 0..<plane {
            for c in 0..<3 {
                let x = (Float(rgba[4 * i + c]) * spec.scale - spec.mean[c]) / spec.std[c]
                out[nchw ? c * plane + i : 3 * i + c] = x
            }
        }
        return out
    }

    /// Camera photos carry an EXIF orientation: redraw them upright first.
    static func upright(_ image: UIImage) -> CGImage? {
        if image.imageOrientation == .up, let cg = image.cgImage { return cg }
        let format = UIGraphicsImageRendererFormat()
        format.scale = 1
        return UIGraphicsImageRenderer(size: image.size, format: format).image { _ in
            image.draw(in: CGRect(origin: .zero, size: image.size))
        }.cgImage
    }

    /// The bundled test image of an entry, decoded from its PNG.
    static func testImage(for entry: ModelEntry, in directory: URL) throws -> CGImage {
        let url = directory.appendingPathComponent(entry.testImage.file)
        guard let source = CGImageSourceCreateWithURL(url as CFURL, nil),
              let image = CGImageSourceCreateImageAtIndex(source, 0, nil) else {
            throw DemoError("cannot decode \(entry.testImage.file)")
        }
        return image
    }
}
