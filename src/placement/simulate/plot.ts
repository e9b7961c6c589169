// An SVG histogram of per-disk fill (relative to the mean), one panel per placement,
// on a shared axis so that the spread of each can be compared at a glance.

const PANEL_WIDTH = 720;
const PANEL_HEIGHT = 150;
const MARGIN = 40;
const BIN_COUNT = 100;
const RANGE_LOW = 0.5;
const RANGE_HIGH = 1.5;

export interface PlotSeries {
  label: string;
  values: number[];
}

function escapeXml(text: string): string {
  return text.replace(
    /[<>&"]/g,
    (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;' })[c] as string,
  );
}

export function fillHistogramSvg(title: string, series: PlotSeries[]): string {
  const height = MARGIN + series.length * (PANEL_HEIGHT + MARGIN);
  const width = PANEL_WIDTH + 2 * MARGIN;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${MARGIN}" y="20" font-size="14">${escapeXml(title)}</text>`,
  ];
  const binWidth = PANEL_WIDTH / BIN_COUNT;
  series.forEach((s, panel) => {
    const bins = new Array<number>(BIN_COUNT).fill(0);
    let below = 0;
    let above = 0;
    for (const value of s.values) {
      if (value < RANGE_LOW) below += 1;
      else if (value >= RANGE_HIGH) above += 1;
      else bins[Math.floor(((value - RANGE_LOW) / (RANGE_HIGH - RANGE_LOW)) * BIN_COUNT)] += 1;
    }
    const peak = Math.max(1, ...bins);
    const top = MARGIN + panel * (PANEL_HEIGHT + MARGIN);
    const base = top + PANEL_HEIGHT;
    parts.push(
      `<text x="${MARGIN}" y="${top - 6}">${escapeXml(s.label)} — ${s.values.length} disks` +
        (below + above > 0
          ? `, ${below} below ${RANGE_LOW}, ${above} at or above ${RANGE_HIGH}`
          : '') +
        `</text>`,
      `<line x1="${MARGIN}" y1="${base}" x2="${MARGIN + PANEL_WIDTH}" y2="${base}" stroke="black"/>`,
    );
    bins.forEach((count, bin) => {
      if (count === 0) return;
      const barHeight = (count / peak) * (PANEL_HEIGHT - 10);
      parts.push(
        `<rect x="${(MARGIN + bin * binWidth).toFixed(1)}" y="${(base - barHeight).toFixed(1)}" ` +
          `width="${(binWidth - 0.5).toFixed(1)}" height="${barHeight.toFixed(1)}" fill="#3b6ea5"/>`,
      );
    });
    for (let tick = RANGE_LOW; tick <= RANGE_HIGH + 1e-9; tick += 0.1) {
      const x = MARGIN + ((tick - RANGE_LOW) / (RANGE_HIGH - RANGE_LOW)) * PANEL_WIDTH;
      parts.push(
        `<line x1="${x.toFixed(1)}" y1="${base}" x2="${x.toFixed(1)}" y2="${base + 4}" stroke="black"/>`,
        `<text x="${x.toFixed(1)}" y="${base + 15}" text-anchor="middle">${tick.toFixed(1)}</text>`,
      );
    }
    const meanX = MARGIN + ((1 - RANGE_LOW) / (RANGE_HIGH - RANGE_LOW)) * PANEL_WIDTH;
    parts.push(
      `<line x1="${meanX}" y1="${top}" x2="${meanX}" y2="${base}" stroke="#c33" stroke-dasharray="3,3"/>`,
    );
  });
  parts.push(
    `<text x="${MARGIN}" y="${height - 8}">per-disk fill ÷ mean fill (dashed: the mean)</text>`,
    '</svg>',
  );
  return parts.join('\n') + '\n';
}
