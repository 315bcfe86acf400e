"""Hand-written PDFs for the renderer's tests: small, exact and built without any network.

``build_pdf`` writes the objects with a correct cross-reference table, so PDFium reads them
without its repair path (a truncated or damaged file is made on purpose by the tests).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

__all__ = (
    "Page",
    "annotated_form_pdf",
    "build_pdf",
    "encrypted_pdf",
    "first_extra",
    "nested_xobject_bomb",
    "nested_xobject_page",
    "pages_pdf",
    "red_left_half_pdf",
    "shading_bomb",
    "text_pdf",
)


def build_pdf(objects: list[bytes], *, trailer: bytes = b"") -> bytes:
    """``objects[i]`` becomes object ``i + 1``; object 1 must be the catalog."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R %s >>\n" % (len(objects) + 1, trailer)
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def stream(content: bytes, extra: bytes = b"", *, compress: bool = False) -> bytes:
    if compress:
        content = zlib.compress(content, 9)
        extra += b" /Filter /FlateDecode"
    return b"<< /Length %d%s >>\nstream\n%s\nendstream" % (len(content), extra, content)


@dataclass
class Page:
    width: float = 612
    height: float = 792
    content: bytes = b""
    rotate: int = 0
    resources: bytes = b""
    """Extra entries of the page's /Resources (the font /F1 is always there)."""
    objects: list[bytes] = field(default_factory=list)
    """Objects the resources refer to, numbered from ``first_extra(...)`` on."""


def pages_pdf(pages: list[Page]) -> bytes:
    """1 catalog, 2 page tree, 3 Helvetica, then each page and its content stream, then the
    pages' extra objects in order."""
    count = len(pages)
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>"
        % (b" ".join(b"%d 0 R" % (4 + 2 * i) for i in range(count)), count),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for i, page in enumerate(pages):
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %g %g] /Rotate %d "
            b"/Resources << /Font << /F1 3 0 R >> %s >> /Contents %d 0 R >>"
            % (page.width, page.height, page.rotate, page.resources, 5 + 2 * i)
        )
        objects.append(stream(page.content, compress=len(page.content) > 1000))
    for page in pages:
        objects.extend(page.objects)
    return build_pdf(objects)


def first_extra(page_count: int) -> int:
    """The object number of the first extra object of a ``pages_pdf`` of that many pages."""
    return 4 + 2 * page_count


def text_pdf(lines: list[str]) -> bytes:
    """One Letter page with each line set in 24 pt Helvetica, one under the other."""
    ops = [b"BT /F1 24 Tf 72 720 Td 28 TL"]
    ops += [b"(%s) Tj T*" % line.encode("latin-1") for line in lines]
    ops.append(b"ET")
    return pages_pdf([Page(content=b"\n".join(ops))])


def red_left_half_pdf() -> bytes:
    """A 200 x 100 pt page whose left half is filled red, the rest left white."""
    return pages_pdf([Page(200, 100, b"1 0 0 rg 0 0 100 100 re f")])


def encrypted_pdf() -> bytes:
    """A page behind the standard security handler (RC4, 40 bits) with a user password: the
    /U entry does not match the empty password, so a reader must ask for one."""
    page = pages_pdf([Page(content=b"BT /F1 24 Tf 72 720 Td (secret) Tj ET")])
    objects_end = page.index(b"xref\n")
    body = page[:objects_end]
    encrypt = b"<< /Filter /Standard /V 1 /R 2 /O <%s> /U <%s> /P -44 >>" % (
        b"ab" * 32,
        b"cd" * 32,
    )
    objects = [obj.split(b" 0 obj\n", 1)[1] for obj in body.split(b"\nendobj\n")[:-1]]
    objects.append(encrypt)
    trailer = b"/Encrypt %d 0 R /ID [<%s> <%s>]" % (len(objects), b"01" * 16, b"01" * 16)
    return build_pdf(objects, trailer=trailer)


def nested_xobject_page(depth: int, fan_out: int, base: int) -> Page:
    """A page drawing form X(depth), each form drawing the one below ``fan_out`` times: about
    ``fan_out ** depth`` paths (8**6: 262144, ~500 MB of PDFium page objects, seconds to
    load) from a few kilobytes. ``base``: the number of the page's first extra object."""
    form = b" /Type /XObject /Subtype /Form /BBox [0 0 100 100]"
    forms = [stream(b"0 0 m 10 10 l 0 10 l h f", form)]
    for level in range(1, depth + 1):
        draws = b" ".join(b"q 1 0 0 1 %d 0 cm /X Do Q" % (i % 3) for i in range(fan_out))
        resources = b" /Resources << /XObject << /X %d 0 R >> >>" % (base + level - 1)
        forms.append(stream(draws, form + resources))
    resources = b"/XObject << /X %d 0 R >>" % (base + depth)
    return Page(content=b"/X Do", resources=resources, objects=forms)


def nested_xobject_bomb(depth: int = 6, fan_out: int = 8) -> bytes:
    return pages_pdf([nested_xobject_page(depth, fan_out, first_extra(1))])


def shading_bomb(ops: int = 20_000) -> bytes:
    """A page painted by a function-based shading whose PostScript calculator function runs
    ``ops`` operators: PDFium evaluates it for every pixel, so rendering takes minutes in a
    few megabytes of memory (a CPU bomb; the page loads and reports its size at once)."""
    base = first_extra(1)
    function = stream(
        b"{ " + b"1 pop " * ops + b"pop pop 1 0 0 }",
        b" /FunctionType 4 /Domain [0 1 0 1] /Range [0 1 0 1 0 1]",
        compress=True,
    )
    shading = (
        b"<< /ShadingType 1 /ColorSpace /DeviceRGB /Domain [0 1 0 1]"
        b" /Matrix [612 0 0 792 0 0] /Function %d 0 R >>" % base
    )
    page = Page(content=b"/S sh", resources=b"/Shading << /S %d 0 R >>" % (base + 1))
    page.objects = [function, shading]
    return pages_pdf([page])


def annotated_form_pdf() -> bytes:
    """A 200 x 100 pt page with a green square annotation (its own appearance stream) on the
    left and, on the right, a text field holding "WWWWWW" without any appearance stream: only a
    renderer with a form environment draws it (yellow background, blue 40 pt text)."""
    return build_pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R /AcroForm << /Fields [8 0 R]"
            b" /DR << /Font << /Helv 3 0 R >> >> >> >>",
            b"<< /Type /Pages /Kids [4 0 R] /Count 1 >>",
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 100] /Resources << >>"
            b" /Contents 5 0 R /Annots [6 0 R 8 0 R] >>",
            stream(b""),
            b"<< /Type /Annot /Subtype /Square /Rect [0 0 50 50] /AP << /N 7 0 R >> /F 4 >>",
            stream(b"0 1 0 rg 0 0 50 50 re f", b" /Type /XObject /Subtype /Form /BBox [0 0 50 50]"),
            b"<< /Type /Annot /Subtype /Widget /FT /Tx /T (name) /V (WWWWWW) /F 4"
            b" /Rect [100 0 200 100] /DA (/Helv 40 Tf 0 0 1 rg) /MK << /BG [1 1 0] >> >>",
        ]
    )
